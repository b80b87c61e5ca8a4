"""A real server (`manage.py serve`, its own SQLite file) killed or stopped mid-stream.

- SIGKILL: nothing that was reported saved is lost, and after a restart the interrupted
  answer is marked as such (not left "generating").
- SIGTERM with streams open over SSE, the OpenAI API and a WebSocket: the process exits,
  every stream ends with an error event or frame (not a cut connection or a hang), and the
  interrupted answers are saved as errors.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.views.sse_client import parse

LONG = "tell me a long story " * 12  # about 250 steps of the fake model
EXIT_WAIT = 30  # seconds a stopping server may take before the test calls it a hang


def rows(server, sql: str, *args) -> list:
    with sqlite3.connect(server.env["DATABASE_URL"].removeprefix("sqlite:///")) as db:
        return db.execute(sql, args).fetchall()


async def read_sse(url: str, body: dict, started: asyncio.Event) -> list:
    """The events of one stream, until the server ends it (or the connection drops)."""
    events, buffer = [], ""
    async with httpx.AsyncClient(timeout=EXIT_WAIT) as client:
        try:
            async with client.stream("POST", url, json=body) as response:
                async for text in response.aiter_text():
                    buffer += text
                    if "\n\n" in buffer:
                        done, buffer = buffer.rsplit("\n\n", 1)
                        events += parse(done + "\n\n")
                        if len([e for e in events if e[0] != "comment"]) >= 3:
                            started.set()
        except httpx.TransportError as exc:
            events.append(("dropped", repr(exc)))
    return events


async def read_socket(url: str, started: asyncio.Event) -> list:
    frames = []
    origin = "http://" + url.split("//", 1)[1].split("/", 1)[0]  # the site's own, port included
    async with connect(url, origin=origin) as socket:
        await socket.send(json.dumps({"type": "chat", "query": LONG, "request_id": "w1"}))
        try:
            async for raw in socket:
                frames.append(json.loads(raw))
                if len(frames) >= 3:
                    started.set()
                if frames[-1]["type"] in ("done", "error"):
                    break
        except Exception as exc:  # noqa: BLE001 - recorded: the test asserts there was none
            frames.append({"type": "dropped", "error": repr(exc)})
    return frames


async def test_sigterm_ends_every_open_stream_with_an_error_and_exits(server_factory):
    # No grace: running answers end at once (tests/deploy/test_shutdown.py: within a grace).
    server = server_factory.start(env={"CHATGLM_FAKE_DELAY_MS": "20", "CHATGLM_SHUTDOWN_GRACE": "0"})
    started = [asyncio.Event() for _ in range(3)]
    readers = [
        asyncio.create_task(read_sse(f"{server.url}/stream", {"query": LONG}, started[0])),
        asyncio.create_task(read_sse(f"{server.url}/v1/chat/completions",
                                     {"model": "fake", "stream": True, "messages": [{"role": "user", "content": LONG}]},
                                     started[1])),
        asyncio.create_task(read_socket(f"{server.ws_url}/ws/chat/", started[2])),
    ]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), EXIT_WAIT)

    server.process.send_signal(signal.SIGTERM)
    seed, openai, socket = await asyncio.wait_for(asyncio.gather(*readers), EXIT_WAIT)
    assert await asyncio.to_thread(server.process.wait, EXIT_WAIT) == 0

    assert seed[-1][0] == "error" and seed[-1][1]["error"]["code"] == "server_shutdown", seed[-3:]
    assert "error" in openai[-1][1] and openai[-1][1]["error"]["code"] == "server_shutdown", openai[-3:]
    assert socket[-1]["type"] == "error" and socket[-1]["error"]["code"] == "server_shutdown", socket[-3:]
    answers = rows(server, "SELECT finish_reason, error, content FROM chat_message WHERE role = 'assistant'")
    assert len(answers) == 3
    assert all(reason == "error" and error == "server_shutdown" and content for reason, error, content in answers)


async def test_sigkill_mid_stream_loses_nothing_saved_and_marks_the_interrupted_answer(server_factory, tmp_path):
    data_dir = tmp_path / "kept"
    server = server_factory.start(env={"CHATGLM_FAKE_DELAY_MS": "20"}, data_dir=data_dir)
    async with httpx.AsyncClient(timeout=EXIT_WAIT) as client:
        saved = (await client.post(f"{server.url}/chat", json={"query": "remember this"})).json()
    assert saved["success"] is True
    started = asyncio.Event()
    reader = asyncio.create_task(read_sse(f"{server.url}/stream", {"query": LONG}, started))
    await asyncio.wait_for(started.wait(), EXIT_WAIT)

    server.process.kill()
    events = await asyncio.wait_for(reader, EXIT_WAIT)
    assert events[-1][0] == "dropped"  # nothing could tell this client; the restart tells the record
    partial = [e for e in events if e[0] == "delta" and not e[1]["finished"]]
    assert partial and not any(e[1].get("finished") for e in events if e[0] == "delta")

    restarted = server_factory.start(env={"CHATGLM_FAKE_DELAY_MS": "20"}, data_dir=data_dir)
    assert "Marked 1 interrupted answer" in restarted.log
    async with httpx.AsyncClient(timeout=EXIT_WAIT) as client:
        more = (await client.post(f"{restarted.url}/chat",
                                  json={"query": "and now?", "conversation_id": saved["conversation_id"]})).json()
    assert more["history"][0] == ["remember this", "You said: remember this"]  # what was reported saved is there
    interrupted = rows(restarted, "SELECT m.finish_reason, m.error FROM chat_message m WHERE m.role = 'assistant' "
                                  "AND m.conversation_id != ?", saved["conversation_id"].replace("-", ""))
    assert interrupted == [("error", "The server stopped while this answer was being generated.")]
    questions = rows(restarted, "SELECT content FROM chat_message WHERE role = 'user' ORDER BY id")
    assert [q for (q,) in questions] == ["remember this", LONG, "and now?"]


pytestmark = pytest.mark.timeout(240)
