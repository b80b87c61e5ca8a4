"""The seed API (/chat, /stream, /clear): the original demo's contract, and its flaws gone."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.test import AsyncClient

from chat.models import Conversation, Message
from tests.views.sse_client import parse, read_stream

pytestmark = pytest.mark.django_db(transaction=True)
JSON = "application/json"


def deltas(events):
    return [data for name, data in events if name == "delta"]


async def post(client, url, body, **kwargs):
    return await client.post(url, json.dumps(body) if not isinstance(body, (str, bytes)) else body,
                             content_type=kwargs.pop("content_type", JSON), **kwargs)


# -- the contract -------------------------------------------------------------------------------


async def test_chat_answer_shape(engine, async_client):
    history = [["Hi", "Hello!"]]
    r = await post(async_client, "/chat", {"query": "How are you?", "history": history})
    body = r.json()
    assert r.status_code == 200
    assert body["query"] == "How are you?"
    assert body["response"] == "You said: How are you?"
    assert body["history"] == history + [["How are you?", "You said: How are you?"]]
    assert body["finish_reason"] == "stop" and body["success"] is True and body["history_truncated"] == 0
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    conversation = await Conversation.objects.aget(pk=body["conversation_id"])
    assert conversation.source == "api"
    contents = [m.content async for m in conversation.messages.all()]
    assert contents == ["Hi", "Hello!", "How are you?", "You said: How are you?"]


async def test_stream_events_as_the_original_page_reads_them(engine, async_client):
    r = await post(async_client, "/stream", {"query": "你好🙂 and emoji 👨‍👩‍👧", "history": []})
    assert r["Content-Type"].startswith("text/event-stream")
    assert r["Cache-Control"] == "no-cache" and r["X-Accel-Buffering"] == "no"
    events = deltas(parse(await read_stream(r)))
    *partial, last = events
    assert all(e["finished"] is False for e in partial) and last["finished"] is True
    assert last["delta"] == "" and last["finish_reason"] == "stop"
    expected = "You said: 你好🙂 and emoji 👨‍👩‍👧"
    assert "".join(e["delta"] for e in events) == last["response"] == expected
    assert not any("\ufffd" in e["delta"] for e in events)  # the original's known issue, gone
    running = ""
    for e in partial:
        running += e["delta"]
        assert e["response"] == running  # each event's response is the text so far
    assert last["history"] == [["你好🙂 and emoji 👨‍👩‍👧", expected]]
    assert set(last) >= {"query", "conversation_id", "usage", "history_truncated"}


async def test_continue_a_saved_conversation(engine, async_client):
    first = (await post(async_client, "/chat", {"query": "one"})).json()
    second = (await post(async_client, "/chat", {"query": "two", "conversation_id": first["conversation_id"]})).json()
    assert second["conversation_id"] == first["conversation_id"]
    assert second["history"] == [["one", "You said: one"], ["two", "You said: two"]]
    assert await Message.objects.filter(conversation_id=first["conversation_id"]).acount() == 4


async def test_history_limited_to_max_pairs(engine, async_client, settings):
    settings.CHATGLM = {**settings.CHATGLM, "MAX_HISTORY": 2}
    history = [[f"q{i}", f"a{i}"] for i in range(5)]
    body = (await post(async_client, "/chat", {"query": "now", "history": history})).json()
    assert body["history_truncated"] == 3
    assert body["history"][:5] == history  # the returned history is still the whole history


async def test_history_trimmed_to_fit_the_context(engine_env, async_client):
    engine_env(CHATGLM_FAKE_CONTEXT="400")  # answer room is a quarter of it
    history = [["x" * 100, "y" * 100] for _ in range(4)]
    body = (await post(async_client, "/chat", {"query": "fit me", "history": history})).json()
    # The fake's tokens average 2 bytes: a pair costs 104 tokens, and 400 - 100 (the answer's
    # room: a quarter of the context) leaves room for two pairs and the query.
    assert body["history_truncated"] == 2
    assert body["response"] == "You said: fit me"


async def test_clear(engine, async_client):
    for method in (async_client.get, async_client.post):
        r = await method("/clear")
        assert r.status_code == 200 and r.json() == {"success": True}


@pytest.mark.parametrize("method, url, allowed", [
    ("get", "/chat", "POST"), ("put", "/stream", "POST"), ("delete", "/clear", "GET, POST"),
])
async def test_a_wrong_method_is_a_json_405_with_allow(engine, async_client, method, url, allowed):
    r = await getattr(async_client, method)(url)
    assert r.status_code == 405 and r["Allow"] == allowed
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == "method_not_allowed"


async def test_store_api_turns_off(engine, async_client, settings):
    settings.CHATGLM = {**settings.CHATGLM, "STORE_API_TURNS": False}
    body = (await post(async_client, "/chat", {"query": "private"})).json()
    assert body["response"] == "You said: private" and body["conversation_id"] is None
    assert await Conversation.objects.acount() == 0


# -- bad input: a clear 4xx naming the field, nothing stored changes --------------------------

BAD = [
    ("malformed", "{not json", 400, None),
    ("not an object", "[1, 2]", 400, None),
    ("missing query", {"history": []}, 400, "query"),
    ("empty query", {"query": "   "}, 400, "query"),
    ("query not a string", {"query": 5}, 400, "query"),
    ("history not a list", {"query": "q", "history": "nope"}, 400, "history"),
    ("pair of three", {"query": "q", "history": [["a", "b", "c"]]}, 400, "history[0]"),
    ("pair not strings", {"query": "q", "history": [["a", 1]]}, 400, "history[0]"),
    ("temperature type", {"query": "q", "temperature": "hot"}, 400, "temperature"),
    ("temperature bool", {"query": "q", "temperature": True}, 400, "temperature"),
    ("top_p range", {"query": "q", "top_p": 1.5}, 400, "top_p"),
    ("max_length range", {"query": "q", "max_length": 0}, 400, "max_length"),
    ("max_new_tokens float", {"query": "q", "max_new_tokens": 2.5}, 400, "max_new_tokens"),
    ("unknown conversation", {"query": "q", "conversation_id": "00000000-0000-0000-0000-000000000000"}, 404, "conversation_id"),
    ("malformed conversation", {"query": "q", "conversation_id": "../etc"}, 404, "conversation_id"),
    ("conversation id type", {"query": "q", "conversation_id": 7}, 400, "conversation_id"),
]


@pytest.mark.parametrize("url", ["/chat", "/stream"])
@pytest.mark.parametrize("label,body,status,param", BAD, ids=[b[0] for b in BAD])
async def test_bad_input(engine, async_client, url, label, body, status, param):
    before = await Message.objects.acount()
    r = await post(async_client, url, body)
    assert r.status_code == status, r.content
    data = r.json()
    assert data["success"] is False and data["error"]["param"] == param and data["error"]["message"]
    assert await Message.objects.acount() == before


async def test_oversized_query_and_body(engine, async_client, settings):
    settings.CHATGLM = {**settings.CHATGLM, "MAX_QUERY_CHARS": 100}
    r = await post(async_client, "/chat", {"query": "x" * 101})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_long"
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    r = await post(async_client, "/chat", {"query": "x" * 2000})
    assert r.status_code == 413


async def test_wrong_content_type(engine, async_client):
    r = await async_client.post("/chat", {"query": "form data"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


async def test_both_history_and_conversation(engine, async_client):
    first = (await post(async_client, "/chat", {"query": "one"})).json()
    r = await post(async_client, "/chat", {"query": "q", "history": [["a", "b"]], "conversation_id": first["conversation_id"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "history"


async def test_another_owners_conversation_is_not_found(engine, settings):
    settings.CHATGLM = {**settings.CHATGLM, "API_KEYS": ["alice:key-a", "bob:key-b"]}
    alice, bob = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
    mine = (await post(AsyncClient(), "/chat", {"query": "secret"}, headers=alice)).json()
    r = await post(AsyncClient(), "/chat", {"query": "peek", "conversation_id": mine["conversation_id"]}, headers=bob)
    assert r.status_code == 404
    assert await Message.objects.filter(conversation_id=mine["conversation_id"]).acount() == 2


# -- overload, failures, disconnects ------------------------------------------------------------


async def test_overload_is_429_with_retry_after(engine_env, async_client):
    engine_env(CHATGLM_FAKE_DELAY_MS="50", CHATGLM_MAX_QUEUE="1", CHATGLM_MAX_BATCH="1")
    running = await post(async_client, "/stream", {"query": "running " * 20})
    await asyncio.sleep(0.2)
    waiting = await post(async_client, "/stream", {"query": "waiting"})
    r = await post(async_client, "/chat", {"query": "one too many"})
    assert r.status_code == 429 and int(r["Retry-After"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"
    for response in (running, waiting):
        await response.streaming_content.aclose()


async def test_model_failure_mid_stream(engine, async_client):
    r = await post(async_client, "/stream", {"query": "please [[fake:error]] now"})
    events = parse(await read_stream(r))
    assert events[-1][0] == "error" and events[-1][1]["error"]["code"] == "generation_failed"
    assert [name for name, _ in events[:-1]] == ["delta"] * (len(events) - 1)
    partial = "".join(d["delta"] for d in deltas(events))
    answer = await Message.objects.filter(role="assistant").alast()
    assert answer.finish_reason == "error" and answer.content == partial and partial
    assert answer.error and await Message.objects.filter(role="user", content__contains="[[fake:error]]").aexists()


async def test_client_gone_before_the_body_starts_cancels_the_turn(engine_env):
    """Through Django's real ASGI handler: the client disconnects while the headers are being
    sent, so the stream body never starts and its `finally` never runs."""
    import asyncio
    import json

    from django.core.asgi import get_asgi_application

    from chat.owners import Owner
    from chat.turns import running_turns

    engine_env(CHATGLM_FAKE_DELAY_MS="20")
    body = json.dumps({"query": "a long enough question " * 5}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    headers_sent = asyncio.Event()

    async def receive():
        if messages:
            return messages.pop(0)
        await headers_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            headers_sent.set()
            await asyncio.sleep(3600)  # a client that never reads

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/stream", "raw_path": b"/stream", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"localhost"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8800),
    }
    await get_asgi_application()(scope, receive, send)
    # The turn gives back its claim once its answer is saved; only then read the database
    # (the request's own thread may still hold the in-memory test database otherwise).
    for _ in range(200):
        if running_turns(Owner(open_api=True)) == 0:
            break
        await asyncio.sleep(0.02)
    message = await Message.objects.filter(role="assistant").alast()
    assert message.finish_reason == "cancelled"


async def test_model_failure_in_chat_is_a_500_json(engine, async_client):
    r = await post(async_client, "/chat", {"query": "[[fake:error]] x"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "generation_failed"


async def test_disconnect_mid_stream_stops_generation_and_keeps_the_partial_answer(engine_env, async_client):
    engine = engine_env(CHATGLM_FAKE_DELAY_MS="20")
    r = await post(async_client, "/stream", {"query": "long " * 40})
    received = ""
    three_deltas = asyncio.Event()

    async def client():
        nonlocal received
        async for chunk in r.streaming_content:
            received += chunk if isinstance(chunk, str) else chunk.decode()
            if received.count("event: delta") >= 3:
                three_deltas.set()

    reading = asyncio.create_task(client())
    await three_deltas.wait()
    reading.cancel()  # what Django's ASGI handler does when the client disconnects
    for _ in range(100):
        answer = await Message.objects.filter(role="assistant").alast()
        if answer.finish_reason:
            break
        await asyncio.sleep(0.02)
    assert answer.finish_reason == "cancelled"
    sent = "".join(d["delta"] for d in deltas(parse(received)))
    assert answer.content.startswith(sent) and len(answer.content) < len("You said: " + "long " * 40)
    assert engine.running_count() == 0 and engine.queue_length() == 0


async def test_queue_position_and_ping_comments(engine_env, async_client, settings):
    settings.CHATGLM = {**settings.CHATGLM, "PING_SECONDS": 0.05}
    engine_env(CHATGLM_FAKE_DELAY_MS="30", CHATGLM_MAX_BATCH="1")
    first = await post(async_client, "/stream", {"query": "first " * 10})
    await asyncio.sleep(0.1)
    second = await post(async_client, "/stream", {"query": "second"})
    body_first, body_second = await asyncio.gather(read_stream(first), read_stream(second))
    comments = [data for name, data in parse(body_second) if name == "comment"]
    assert "queued position=1" in comments and "ping" in comments
    assert deltas(parse(body_second))[-1]["response"] == "You said: second"
    assert deltas(parse(body_first))[-1]["response"] == "You said: " + "first " * 10


async def test_concurrent_streams_do_not_mix(engine_env, async_client):
    engine_env(CHATGLM_FAKE_DELAY_MS="2")
    queries = [f"user {i}: 你好 {i} 🙂" for i in range(10)]
    responses = await asyncio.gather(*(post(async_client, "/stream", {"query": q}) for q in queries))
    bodies = await asyncio.gather(*(read_stream(r) for r in responses))
    for query, body in zip(queries, bodies):
        events = deltas(parse(body))
        assert "".join(e["delta"] for e in events) == f"You said: {query}" == events[-1]["response"]


# -- security: API keys, CSRF for session callers, CORS ----------------------------------------


async def test_api_keys(engine, settings):
    settings.CHATGLM = {**settings.CHATGLM, "API_KEYS": ["ci:sk-right"]}
    assert (await post(AsyncClient(), "/chat", {"query": "q"})).status_code == 401
    # Headers go per request: AsyncClient(headers=...) did not send them here (docs/pitfalls.md#test-headers).
    wrong = {"Authorization": "Bearer sk-wrong"}
    assert (await post(AsyncClient(), "/stream", {"query": "q"}, headers=wrong)).status_code == 401
    body = (await post(AsyncClient(), "/chat", {"query": "q"}, headers={"Authorization": "Bearer sk-right"})).json()
    assert body["success"] is True
    assert (await Conversation.objects.aget(pk=body["conversation_id"])).api_key_name == "ci"


async def test_session_callers_need_the_csrf_token(engine):
    browser = AsyncClient(enforce_csrf_checks=True)
    page = await browser.get("/")  # sets the CSRF cookie, and makes no session
    assert "sessionid" not in browser.cookies
    token = page.cookies["csrftoken"].value
    # The page's first conversation makes the session.
    await post(browser, "/api/conversations", {}, headers={"X-CSRFToken": token})
    assert "sessionid" in browser.cookies
    refused = await post(browser, "/chat", {"query": "no token"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    accepted = await post(browser, "/chat", {"query": "with token"}, headers={"X-CSRFToken": token})
    assert accepted.status_code == 200
    # A program without the session cookie carries no session authority and needs no token.
    assert (await post(AsyncClient(enforce_csrf_checks=True), "/chat", {"query": "q"})).status_code == 200


async def test_cors_preflight(engine, async_client, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example"]
    r = await async_client.options("/stream", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    })
    assert r["Access-Control-Allow-Origin"] == "https://app.example"
    other = await async_client.options("/stream", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in other


# -- the real default model ---------------------------------------------------------------------


@pytest.mark.slow
async def test_stream_from_the_default_model(engine_env, async_client, default_model_dir):
    engine_env(CHATGLM_MODEL="default", CHATGLM_BACKEND="transformers")  # the torch path; llamacpp has its own tests
    r = await post(async_client, "/stream", {"query": "What is the capital of France?", "history": [], "max_new_tokens": 40})
    events = deltas(parse(await read_stream(r)))
    final = events[-1]
    assert final["finished"] is True and "Paris" in final["response"]
    assert "".join(e["delta"] for e in events) == final["response"]
    assert not any("\ufffd" in e["delta"] for e in events)


async def test_api_key_entries_bare_and_empty(engine, settings):
    settings.CHATGLM = {**settings.CHATGLM, "API_KEYS": ["sk-live-aaaa", "sk-live-bbbb", "empty:"]}
    names = set()
    for key in ("sk-live-aaaa", "sk-live-bbbb"):
        body = (await post(AsyncClient(), "/chat", {"query": "q"}, headers={"Authorization": f"Bearer {key}"})).json()
        names.add((await Conversation.objects.aget(pk=body["conversation_id"])).api_key_name)
    assert len(names) == 2 and not any("sk-live" in name for name in names)  # distinct, no secret stored
    for header in ("Basic x", "Bearer ", "Bearer"):  # an empty key never matches the empty entry
        assert (await post(AsyncClient(), "/chat", {"query": "q"}, headers={"Authorization": header})).status_code == 401
