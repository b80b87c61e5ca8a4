"""SIGTERM during a stream: the server stops accepting, lets running answers finish within
CHATGLM_SHUTDOWN_GRACE, ends the rest as saved `server_shutdown` errors, and exits."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading

import httpx

from tests.deploy.conftest import wait_for


def open_stream(server, words: int):
    """A /stream in a thread; returns (started event, result dict, thread)."""
    started, result = threading.Event(), {"deltas": []}

    def run():
        with httpx.stream("POST", f"{server.url}/stream", json={"query": " ".join(["w"] * words)}, timeout=120) as response:
            event = None
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    started.set()
                    if event == "error":
                        result["error"] = data
                    elif data.get("finished"):
                        result["last"] = data
                    event = None

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(60)
    return result, thread


def saved_answers(server) -> list[tuple]:
    db = server.env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT finish_reason, error, content FROM chat_message WHERE role = 'assistant' ORDER BY id").fetchall()


def test_a_running_answer_finishes_within_the_grace(server_factory):
    server = server_factory.start(env={"CHATGLM_FAKE_DELAY_MS": "50", "CHATGLM_SHUTDOWN_GRACE": "30"})
    result, thread = open_stream(server, 40)  # about 2 s of answer
    server.process.send_signal(signal.SIGTERM)
    # Not accepting any more: a new connection is refused while the answer goes on.
    wait_for(lambda: _refused(server), timeout=5, step=0.05)
    thread.join(60)
    assert result["last"]["finish_reason"] == "stop"
    assert result["last"]["response"] == "You said: " + " ".join(["w"] * 40)
    assert server.process.wait(30) == 0
    assert saved_answers(server)[-1][0] == "stop"


def test_an_answer_longer_than_the_grace_ends_as_a_saved_error(server_factory):
    server = server_factory.start(env={"CHATGLM_FAKE_DELAY_MS": "50", "CHATGLM_SHUTDOWN_GRACE": "1"})
    result, thread = open_stream(server, 400)  # about 20 s of answer
    server.process.send_signal(signal.SIGTERM)
    thread.join(60)
    assert result["error"]["error"]["code"] == "server_shutdown"
    assert server.process.wait(30) == 0
    finish_reason, error, content = saved_answers(server)[-1]
    assert (finish_reason, error) == ("error", "server_shutdown") and content.startswith("You said: w")


def _refused(server) -> bool:
    try:
        httpx.get(f"{server.url}/healthz", timeout=1)
    except httpx.ConnectError:
        return True
    return False
