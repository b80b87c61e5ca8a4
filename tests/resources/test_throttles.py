"""Rate limits, shares and caps per client, on a real server (loopback is not exempt here)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chat.throttle import Buckets

KEY = "sk-load-test"


def test_a_bucket_holds_a_minutes_worth_and_refills_at_its_rate():
    buckets = Buckets()
    assert [buckets.take("k", 3, now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k", 3, now=0.0) == pytest.approx(20.0)  # 3 a minute: one every 20 s
    assert buckets.take("k", 3, now=10.0) == pytest.approx(10.0)
    assert buckets.take("k", 3, now=20.5) == 0.0
    assert buckets.take("other", 3, now=20.5) == 0.0  # keys are independent


def test_who_is_counted(settings):
    from chat import throttle
    from chat.owners import Owner

    visitor = Owner(visitor=uuid.uuid4())
    token = throttle.bind_client_ip("203.0.113.9")
    try:
        assert throttle.client_key(Owner(user_id=7)) == "user:7"
        assert throttle.client_key(Owner(api_key="ci")) == "key:ci"
        assert throttle.client_key(visitor) == throttle.client_key(Owner(open_api=True)) == "ip:203.0.113.9"
        assert throttle.queue_owner(visitor) == "ip:203.0.113.9"  # every session of the address: one share
    finally:
        throttle._client_ip.reset(token)
    token = throttle.bind_client_ip("127.0.0.1")  # exempt by default: loopback
    try:
        assert throttle.client_key(Owner(open_api=True)) is None
        assert throttle.queue_owner(visitor) == f"visitor:{visitor.visitor}"
        settings.CHATGLM = {**settings.CHATGLM, "THROTTLE_EXEMPT": ["10.0.0.0/8"]}
        assert throttle.client_key(Owner(open_api=True)) == "ip:127.0.0.1"
    finally:
        throttle._client_ip.reset(token)


BASE = {
    "CHATGLM_THROTTLE_EXEMPT": "",  # loopback is counted like any address here
    "CHATGLM_API_KEYS": f"load:{KEY},other:sk-other",
    "CHATGLM_FAKE_DELAY_MS": "50",
}


def start(server_factory, data_dir=None, **env):
    return server_factory.start(env={**BASE, **env}, data_dir=data_dir)


def rows(server, table: str) -> int:
    with sqlite3.connect(server.env["DATABASE_URL"].removeprefix("sqlite:///")) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def browser(server) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=30)
    client.get("/")
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


def test_the_api_key_turn_rate_gets_429_with_retry_after(server_factory):
    server = start(server_factory, CHATGLM_TURNS_PER_MINUTE="2")
    auth = {"Authorization": f"Bearer {KEY}"}
    answers = [httpx.post(f"{server.url}/chat", json={"query": "q"}, headers=auth, timeout=30) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
    # Another key has a bucket of its own.
    other = httpx.post(f"{server.url}/chat", json={"query": "q"}, headers={"Authorization": "Bearer sk-other"}, timeout=30)
    assert other.status_code == 200


def test_page_loads_make_no_sessions_and_conversation_creation_is_limited_per_address(server_factory):
    server = start(server_factory, CHATGLM_CONVERSATIONS_PER_MINUTE="3", CHATGLM_API_KEYS="")
    for _ in range(20):
        assert httpx.get(f"{server.url}/", timeout=10).status_code == 200
    assert rows(server, "django_session") == 0

    created = []
    for _ in range(4):  # a fresh session each time: the limit is the address's
        client = browser(server)
        created.append(client.post("/api/conversations", json={"system_prompt": "s" * 1000}))
    assert [r.status_code for r in created] == [201, 201, 201, 429]
    assert created[-1].json()["error"]["code"] == "rate_limited" and int(created[-1].headers["Retry-After"]) >= 1
    assert rows(server, "django_session") == 3  # the refused one made no session either


def test_with_api_keys_page_sessions_are_limited_per_address(server_factory):
    """With keys set the page makes the session that alone chats without a key: new ones are rate-limited."""
    server = start(server_factory, CHATGLM_SESSIONS_PER_MINUTE="3")
    loads = [httpx.get(f"{server.url}/", timeout=10) for _ in range(4)]
    assert [r.status_code for r in loads] == [200, 200, 200, 429]
    assert int(loads[-1].headers["Retry-After"]) >= 1
    assert rows(server, "django_session") == 3
    # A browser that has its session reloads the page freely.
    again = httpx.get(f"{server.url}/", cookies=loads[0].cookies, timeout=10)
    assert again.status_code == 200


async def test_anonymous_answers_are_limited_per_address_and_sockets_per_session(server_factory):
    server = start(server_factory, CHATGLM_MAX_RUNNING_PER_IP="2", CHATGLM_MAX_VISITOR_CONVERSATIONS="2",
                   CHATGLM_MAX_SOCKETS_PER_SESSION="2", CHATGLM_MAX_SOCKETS_PER_IP="4")
    sessions, conversations = [], []
    for index in range(3):
        client = browser(server)
        created = client.post("/api/conversations", json={})
        assert created.status_code == 201
        conversations.append(created.json()["id"])
        if index == 0:  # an anonymous visitor keeps at most 2 conversations
            assert client.post("/api/conversations", json={}).status_code == 201
            capped = client.post("/api/conversations", json={})
            assert capped.status_code == 403 and capped.json()["error"]["code"] == "too_many_conversations"
        sessions.append(f"sessionid={client.cookies['sessionid']}")

    sockets = [await connect(f"{server.ws_url}/ws/chat/", origin=server.url, additional_headers={"Cookie": cookie})
               for cookie in sessions]
    try:
        long = "a long question " * 40
        for ws, conversation in zip(sockets[:2], conversations):  # two sessions: the address's whole share
            await ws.send(json.dumps({"type": "chat", "query": long, "conversation_id": conversation}))
            assert json.loads(await ws.recv())["type"] == "start"
        await sockets[2].send(json.dumps({"type": "chat", "query": long, "conversation_id": conversations[2]}))
        frame = json.loads(await sockets[2].recv())
        assert frame["type"] == "error" and frame["error"]["code"] == "too_many_running", frame

        # Two sockets per session: a third one of the same session is refused at the handshake.
        second = await connect(f"{server.ws_url}/ws/chat/", origin=server.url, additional_headers={"Cookie": sessions[0]})
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{server.ws_url}/ws/chat/", origin=server.url, additional_headers={"Cookie": sessions[0]})
        assert refused.value.response.status_code == 403
        # Four per address: four are open, a fifth (with no session) is refused.
        with pytest.raises(InvalidStatus):
            await connect(f"{server.ws_url}/ws/chat/", origin=server.url)
        await second.close()
        await asyncio.sleep(0.5)
        third = await connect(f"{server.ws_url}/ws/chat/", origin=server.url)  # a place was freed
        await third.close()
    finally:
        for ws in sockets:
            await ws.close()


async def test_one_key_cannot_fill_the_queue_for_everyone(server_factory):
    server = start(server_factory, CHATGLM_MAX_BATCH="1", CHATGLM_MAX_QUEUED_PER_CLIENT="2")
    body = {"query": "a question " * 8}  # about 4 s of answer at 50 ms a step: the others wait meanwhile

    async def ask(client, key):
        return await client.post("/chat", json=body, headers={"Authorization": f"Bearer {key}"})

    async with httpx.AsyncClient(base_url=server.url, timeout=180) as client:
        flood = [asyncio.create_task(ask(client, KEY)) for _ in range(4)]
        await asyncio.sleep(1.0)  # one runs, two wait: the fourth is past the key's share
        other = await ask(client, "sk-other")  # still gets in, and is served
        answers = await asyncio.gather(*flood)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 200, 429]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "overloaded" and int(refused.headers["Retry-After"]) >= 1
    assert other.status_code == 200 and other.json()["response"] == "You said: " + body["query"]


@pytest.mark.redis
def test_with_redis_the_rate_is_shared_by_every_process(server_factory, tmp_path):
    from tests.consumers.test_multiprocess import REDIS_URL, redis_reachable

    if not redis_reachable():
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    name = f"shared{uuid.uuid4().hex[:8]}"  # a bucket no earlier run has used
    env = {"REDIS_URL": REDIS_URL, "CHATGLM_TURNS_PER_MINUTE": "2", "CHATGLM_API_KEYS": f"{name}:sk-shared"}
    one = start(server_factory, data_dir=tmp_path / "shared", **env)
    two = start(server_factory, data_dir=tmp_path / "shared", **env)
    auth = {"Authorization": "Bearer sk-shared"}
    statuses = [httpx.post(f"{server.url}/chat", json={"query": "q"}, headers=auth, timeout=30).status_code
                for server in (one, two, two)]
    assert statuses == [200, 200, 429]
