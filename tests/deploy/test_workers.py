"""`serve --workers 2` on Redis (and PostgreSQL where present), real processes on 127.0.0.1:
conversations continue on whichever worker a request reaches, the one-answer-per-conversation
rule and the per-user running limit hold across workers, live sync crosses workers on open
sockets, one engine process serves both workers, and SIGHUP restarts them one at a time."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import uuid

import httpx
import pytest
import websockets

from tests.deploy.conftest import wait_for, worker_of

pytestmark = pytest.mark.redis  # and PostgreSQL where present (conftest.database_url)


@pytest.fixture
def workers(server_factory, redis_url, database_url):
    server = server_factory.start(args=("--workers", "2"), env={
        "REDIS_URL": redis_url, "DATABASE_URL": database_url,
        "CHATGLM_FAKE_DELAY_MS": "40", "CHATGLM_MAX_RUNNING_PER_USER": "1",
    })
    wait_for(lambda: "2 workers serve" in server.log, timeout=120)
    return server


def served_by(client: httpx.Client) -> int:
    request_id = uuid.uuid4().hex
    assert client.get("/healthz", headers={"X-Request-ID": request_id}).status_code == 200
    return worker_of_log(client.server, request_id)


def worker_of_log(server, request_id):
    return worker_of(server, request_id)


def two_clients(server) -> tuple[httpx.Client, httpx.Client]:
    """Two keep-alive clients whose connections were accepted by different workers."""
    first = httpx.Client(base_url=server.url, timeout=60)
    first.server = server
    pid = served_by(first)
    for _ in range(60):
        other = httpx.Client(base_url=server.url, timeout=60)
        other.server = server
        if served_by(other) != pid:
            return first, other
        other.close()
    pytest.fail("every connection went to one worker")


def browser_session(client: httpx.Client) -> None:
    """Give a client the cookies of a browser that has used the page: the CSRF cookie from a page
    load, and a session from its first conversation (a page load makes none)."""
    assert client.get("/").status_code == 200
    created = client.post("/api/conversations", json={}, headers={"X-CSRFToken": client.cookies["csrftoken"]})
    assert created.status_code == 201, created.text


def stream_until_first_delta(client: httpx.Client, body: dict, headers=None):
    """Start a /stream in a thread; return once it has sent text (the answer is running)."""
    started, result = threading.Event(), {}

    def run():
        with client.stream("POST", "/stream", json=body, headers=headers or {}) as response:
            result["status"] = response.status_code
            for line in response.iter_lines():
                if line.startswith("data:"):
                    started.set()
                    data = json.loads(line[5:])
                    if data.get("finished"):
                        result["last"] = data
        started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(60)
    return thread, result


def test_one_engine_serves_two_workers(workers):
    health = httpx.get(f"{workers.url}/healthz").json()
    assert (health["backend"], health["model"], health["upstream"]) == ("openai", "fake", {"reachable": True})
    # The supervisor started one engine process; the workers only forward to it.
    assert workers.log.count("Starting the engine process") == 1
    assert workers.log.count("Model fake ready") == 3  # the engine and two workers reading its model list


def test_a_conversation_continues_across_workers_and_the_rules_hold(workers):
    a, b = two_clients(workers)
    first = a.post("/chat", json={"query": "first question"}).json()
    conversation = first["conversation_id"]
    second = b.post("/chat", json={"query": "second question", "conversation_id": conversation}).json()
    assert second["history"] == [["first question", "You said: first question"],
                                 ["second question", "You said: second question"]]

    # One answer at a time per conversation, whichever worker is asked.
    thread, result = stream_until_first_delta(a, {"query": " ".join(["long"] * 60), "conversation_id": conversation})
    busy = b.post("/chat", json={"query": "meanwhile", "conversation_id": conversation})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "turn_in_progress"
    thread.join(60)
    assert result["last"]["finish_reason"] == "stop"
    assert b.post("/chat", json={"query": "after", "conversation_id": conversation}).status_code == 200
    final = a.post("/chat", json={"query": "last", "conversation_id": conversation}).json()
    assert [q for q, _ in final["history"]] == ["first question", "second question", " ".join(["long"] * 60), "after", "last"]


def test_the_per_user_limit_holds_across_workers(workers):
    a, b = two_clients(workers)
    browser_session(a)
    b.cookies.update(a.cookies)
    headers = {"X-CSRFToken": a.cookies["csrftoken"], "Origin": workers.url, "Referer": workers.url + "/"}
    thread, _ = stream_until_first_delta(a, {"query": " ".join(["long"] * 60)}, headers)
    refused = b.post("/stream", json={"query": "another"}, headers=headers)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_running"
    thread.join(60)
    with b.stream("POST", "/stream", json={"query": "another"}, headers=headers) as response:
        assert response.status_code == 200  # the slot is free again, on the other worker too
        response.read()


def test_live_sync_across_workers_on_open_sockets(workers):
    """Tabs on other workers follow answers that a tab on one worker asks for, on sockets that
    stay open (idle and busy) across several answers."""
    a, _ = two_clients(workers)
    browser_session(a)
    cookie = "; ".join(f"{k}={v}" for k, v in a.cookies.items())

    async def follow(ws) -> str:
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
            assert frame["type"] != "error", frame
            if frame["type"] == "done":
                return frame["response"]

    async def scenario(ids):
        sockets = [await websockets.connect(f"{workers.ws_url}/ws/chat/", origin=workers.url,
                                            additional_headers={"Cookie": cookie, "X-Request-ID": i}) for i in ids]
        asker, followers = sockets[0], sockets[1:]
        conversation = None
        for round_ in range(3):
            await asker.send(json.dumps({"type": "chat", "query": f"round {round_} " + "word " * 20,
                                         "request_id": f"r{round_}", "conversation_id": conversation}))
            if conversation is None:
                while (frame := json.loads(await asyncio.wait_for(asker.recv(), 60)))["type"] != "start":
                    pass
                conversation = frame["conversation_id"]
                for ws in followers:  # mid-answer: each catches up, then follows
                    await ws.send(json.dumps({"type": "subscribe", "conversation_id": conversation}))
            answers = await asyncio.gather(follow(asker), *(follow(ws) for ws in followers))
            assert answers[0] == f"You said: round {round_} " + "word " * 20
            assert set(answers) == {answers[0]}, answers
            await asyncio.sleep(6)  # idle past channels_redis's 5 s blocking read: the sockets stay open
        for ws in sockets:
            await ws.close()

    # Which worker accepts a socket is the kernel's choice (both wait on the shared socket): a
    # busy machine can hand all six to one. The scenario runs again until a follower's socket
    # landed on the other worker, which is the case this test is about.
    for _ in range(4):
        ids = [uuid.uuid4().hex for _ in range(6)]
        asyncio.run(scenario(ids))
        pids = [worker_of(workers, i) for i in ids]
        if set(pids[1:]) - {pids[0]}:
            break
    assert set(pids[1:]) - {pids[0]}, "no follower landed on another worker than the asker"


def test_sighup_restarts_the_workers_one_by_one_and_nothing_saved_is_lost(workers):
    a, b = two_clients(workers)
    old = {served_by(a), served_by(b)}
    conversation = a.post("/chat", json={"query": "before the restart"}).json()["conversation_id"]
    a.close(), b.close()
    workers.process.send_signal(signal.SIGHUP)
    wait_for(lambda: workers.log.count("replaced by") == 2, timeout=180)
    with httpx.Client(base_url=workers.url, timeout=60) as client:
        answer = client.post("/chat", json={"query": "after", "conversation_id": conversation}).json()
        assert [q for q, _ in answer["history"]] == ["before the restart", "after"]
        client.server = workers
        assert served_by(client) not in old
    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(60) == 0


def test_an_answer_followed_through_a_rolling_restart_is_not_lost(workers):
    """SIGHUP while a socket follows an answer: its worker stops accepting, finishes the answer
    within CHATGLM_SHUTDOWN_GRACE, and the browser gets `done`; the page then reconnects to a
    new worker and finds the answer saved."""
    a, _ = two_clients(workers)
    browser_session(a)
    cookie = "; ".join(f"{k}={v}" for k, v in a.cookies.items())
    query = "restart " + "word " * 300  # about 12 s at 40 ms a step: longer than two worker starts

    async def scenario():
        async with websockets.connect(f"{workers.ws_url}/ws/chat/", origin=workers.url,
                                      additional_headers={"Cookie": cookie, "X-Request-ID": socket_id}) as ws:
            await ws.send(json.dumps({"type": "chat", "query": query, "request_id": "r",
                                      "params": {"max_new_tokens": 400}}))
            while (frame := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] != "delta":
                pass
            workers.process.send_signal(signal.SIGHUP)  # mid-answer
            while (frame := json.loads(await asyncio.wait_for(ws.recv(), 120)))["type"] not in ("done", "error"):
                pass
            return frame, workers.log

    socket_id = uuid.uuid4().hex
    done, log_at_done = asyncio.run(scenario())
    # The worker holding the socket was told to stop while the answer ran, and finished it.
    assert f"worker {worker_of(workers, socket_id)} replaced by" in log_at_done
    # Ended by the model (its budget may cut it: "length"), not by the restart.
    assert done["type"] == "done" and done["finish_reason"] in ("stop", "length")
    assert ("You said: " + query).startswith(done["response"]) and len(done["response"]) > 200
    wait_for(lambda: workers.log.count("replaced by") == 2, timeout=180)
    with httpx.Client(base_url=workers.url, timeout=60, cookies=a.cookies) as page:
        saved = page.get(f"/api/conversations/{done['conversation_id']}").json()
    answers = [m for m in saved["messages"] if m["role"] == "assistant"]
    assert (answers[-1]["content"], answers[-1]["finish_reason"]) == (done["response"], done["finish_reason"])
