"""The chat WebSocket through the project's ASGI stack (origin check, sessions, auth), in process."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client

from chat.models import Conversation, Message, Role, Source
from chat.owners import PAGE_SESSION_KEY, VISITOR_SESSION_KEY
from chatglm_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

LONG = "Tell me everything about the history of tea, " * 3  # about 80 steps of the fake model
SITE = [(b"origin", b"http://localhost"), (b"host", b"localhost")]


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    """A new in-memory layer per test: its queues belong to one event loop."""
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


@pytest.fixture
def slow_engine(engine_env):
    return engine_env(CHATGLM_MODEL="fake", CHATGLM_FAKE_DELAY_MS="20")


async def visitor_session() -> str:
    store = SessionStore()
    store[VISITOR_SESSION_KEY] = str(uuid.uuid4())
    store[PAGE_SESSION_KEY] = True  # as the page leaves it (chat.views.pages)
    await store.asave()
    return store.session_key


async def open_socket(session_key: str | None = None, path: str = "/ws/chat/", headers=SITE) -> WebsocketCommunicator:
    headers = list(headers)
    if session_key:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode()))
    socket = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await socket.connect()
    assert connected
    return socket


async def frames_until(socket, *types: str, timeout: float = 10) -> list[dict]:
    """Frames up to and including the first one whose type is in `types`."""
    frames = []
    while True:
        frame = await socket.receive_json_from(timeout=timeout)
        frames.append(frame)
        if frame["type"] in types:
            return frames


def text_of(frames: list[dict]) -> str:
    return "".join(f["delta"] for f in frames if f["type"] == "delta")


async def answer_row(message_id: int, wait_done: bool = True) -> Message:
    for _ in range(200):
        row = await Message.objects.aget(pk=message_id)
        if row.finish_reason or not wait_done:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError("the answer was never saved")


async def test_full_exchange_and_continuation(engine):
    socket = await open_socket(await visitor_session())
    await socket.send_json_to({"type": "chat", "query": "你好🙂", "request_id": "r1", "params": {"temperature": 0.5}})
    frames = await frames_until(socket, "done")
    start, done = frames[0], frames[-1]
    assert start["type"] == "start" and start["request_id"] == "r1"
    assert {f["request_id"] for f in frames} == {"r1"}
    assert text_of(frames) == done["response"] == "You said: 你好🙂"
    assert all("\ufffd" not in f["delta"] for f in frames if f["type"] == "delta")
    assert [f["response"] for f in frames if f["type"] == "delta"][-1] == done["response"]
    assert done["finish_reason"] == "stop" and done["usage"]["completion_tokens"] > 0
    assert done["conversation_id"] == start["conversation_id"] and done["message_id"] == start["message_id"]

    conversation = await Conversation.objects.aget(pk=start["conversation_id"])
    assert conversation.source == Source.WEB and conversation.visitor is not None
    assert (await answer_row(done["message_id"])).content == "You said: 你好🙂"

    await socket.send_json_to({"type": "chat", "query": "again", "conversation_id": start["conversation_id"]})
    frames = await frames_until(socket, "done")
    assert frames[0]["request_id"] is None and frames[-1]["response"] == "You said: again"
    assert frames[-1]["conversation_id"] == start["conversation_id"]
    assert await Message.objects.filter(conversation=conversation, role=Role.ASSISTANT).acount() == 2
    await socket.disconnect()


async def test_logged_in_user_owns_the_conversation(engine):
    user = await get_user_model().objects.acreate_user("ada", password="pw-12345-long")
    client = Client()
    await sync_to_async(client.force_login)(user)
    socket = await open_socket(client.cookies[settings.SESSION_COOKIE_NAME].value)
    await socket.send_json_to({"type": "chat", "query": "hi"})
    done = (await frames_until(socket, "done"))[-1]
    assert (await Conversation.objects.aget(pk=done["conversation_id"])).user_id == user.pk
    await socket.disconnect()


async def test_stop_keeps_the_partial_answer(slow_engine):
    socket = await open_socket(await visitor_session())
    await socket.send_json_to({"type": "chat", "query": LONG, "request_id": 7})
    await frames_until(socket, "delta")
    await socket.send_json_to({"type": "stop", "request_id": 7})
    frames = await frames_until(socket, "done")
    done = frames[-1]
    assert done["finish_reason"] == "cancelled" and done["request_id"] == 7
    assert 0 < len(done["response"]) < len("You said: " + LONG)
    row = await answer_row(done["message_id"])
    assert (row.finish_reason, row.content) == ("cancelled", done["response"])
    await socket.disconnect()


async def test_second_chat_while_generating_is_refused(slow_engine):
    socket = await open_socket(await visitor_session())
    await socket.send_json_to({"type": "chat", "query": "first one", "request_id": "a"})
    await frames_until(socket, "start")
    await socket.send_json_to({"type": "chat", "query": "second", "request_id": "b"})
    frames = await frames_until(socket, "error")
    assert frames[-1]["request_id"] == "b" and frames[-1]["error"]["code"] == "generation_in_progress"
    done = (await frames_until(socket, "done"))[-1]
    assert done["request_id"] == "a" and done["response"] == "You said: first one"
    await socket.disconnect()


async def test_page_closed_mid_answer_goes_on_and_a_new_socket_picks_it_up(slow_engine):
    session_key = await visitor_session()
    first = await open_socket(session_key)
    await first.send_json_to({"type": "chat", "query": LONG})
    start = (await frames_until(first, "start"))[-1]
    await frames_until(first, "delta")
    await first.disconnect()  # the tab is closed (or reloaded)

    await asyncio.sleep(0.2)
    second = await open_socket(session_key)
    await second.send_json_to({"type": "subscribe", "conversation_id": start["conversation_id"]})
    frames = await frames_until(second, "done")
    assert frames[0] == {"type": "subscribed", "request_id": None, "conversation_id": start["conversation_id"]}
    assert frames[1]["type"] == "start" and frames[1]["message_id"] == start["message_id"]
    deltas = [f for f in frames if f["type"] == "delta"]
    assert len(deltas[0]["delta"]) > 1  # the text so far, at once
    assert len(deltas) > 2  # then the rest as it comes
    full = "You said: " + LONG
    assert text_of(frames) == frames[-1]["response"] == full
    assert frames[-1]["finish_reason"] == "stop"
    row = await answer_row(start["message_id"])
    assert (row.finish_reason, row.content) == ("stop", full)
    await second.disconnect()


async def test_a_reloaded_page_can_stop_the_answer(slow_engine):
    session_key = await visitor_session()
    first = await open_socket(session_key)
    await first.send_json_to({"type": "chat", "query": LONG})
    start = (await frames_until(first, "start"))[-1]
    await first.disconnect()
    second = await open_socket(session_key)
    await second.send_json_to({"type": "subscribe", "conversation_id": start["conversation_id"]})
    await frames_until(second, "delta")
    await second.send_json_to({"type": "stop"})
    done = (await frames_until(second, "done"))[-1]
    assert done["finish_reason"] == "cancelled"
    assert (await answer_row(start["message_id"])).finish_reason == "cancelled"
    await second.disconnect()


async def test_stop_by_conversation_id_needs_ownership(slow_engine):
    session_key = await visitor_session()
    first = await open_socket(session_key)
    await first.send_json_to({"type": "chat", "query": LONG})
    start = (await frames_until(first, "start"))[-1]
    await first.disconnect()
    stop = {"type": "stop", "conversation_id": start["conversation_id"]}
    stranger = await open_socket(await visitor_session())
    await stranger.send_json_to(stop)
    assert (await stranger.receive_json_from())["error"]["code"] == "not_found"
    await asyncio.sleep(0.1)
    assert (await answer_row(start["message_id"], wait_done=False)).finish_reason == ""
    other_tab = await open_socket(session_key)
    await other_tab.send_json_to(stop)
    row = await answer_row(start["message_id"])
    assert row.finish_reason == "cancelled" and row.content
    await stranger.disconnect()
    await other_tab.disconnect()


async def test_running_answers_per_person_are_limited(slow_engine, settings):
    settings.CHATGLM = {**settings.CHATGLM, "MAX_RUNNING_PER_USER": 2}
    session_key = await visitor_session()
    tabs = [await open_socket(session_key) for _ in range(3)]
    for tab in tabs[:2]:
        await tab.send_json_to({"type": "chat", "query": LONG})
        await frames_until(tab, "start")
    await tabs[2].send_json_to({"type": "chat", "query": "one more", "request_id": "x"})
    error = await tabs[2].receive_json_from()
    assert error["error"]["code"] == "too_many_running" and error["retry_after"] > 0
    for tab in tabs[:2]:
        await tab.send_json_to({"type": "stop"})
        assert (await frames_until(tab, "done"))[-1]["finish_reason"] == "cancelled"
    for tab in tabs:
        await tab.disconnect()


async def test_api_key_socket_closed_mid_answer_stops_it(slow_engine, settings):
    settings.CHATGLM = {**settings.CHATGLM, "API_KEYS": ["bot:s3cret-key"]}
    socket = await open_socket(path="/ws/chat/?api_key=s3cret-key")
    await socket.send_json_to({"type": "chat", "query": LONG})
    start = (await frames_until(socket, "start"))[-1]
    await frames_until(socket, "delta")
    await socket.disconnect()
    row = await answer_row(start["message_id"])
    assert row.finish_reason == "cancelled" and 0 < len(row.content) < len("You said: " + LONG)
    conversation = await Conversation.objects.aget(pk=start["conversation_id"])
    assert (conversation.source, conversation.api_key_name, conversation.visitor) == (Source.WEBSOCKET, "bot", None)


async def test_api_keys(engine, settings):
    settings.CHATGLM = {**settings.CHATGLM, "API_KEYS": ["bot:s3cret-key"]}
    for path in ("/ws/chat/?api_key=wrong", "/ws/chat/"):  # a bad key; no key and no session
        socket = await open_socket(path=path)
        assert (await socket.receive_json_from())["error"]["code"] == "invalid_api_key"
        assert await socket.receive_output() == {"type": "websocket.close", "code": 4401}
        await socket.disconnect()
    socket = await open_socket(await visitor_session())  # browsers need no key
    await socket.send_json_to({"type": "chat", "query": "hi"})
    assert (await frames_until(socket, "done"))[-1]["response"] == "You said: hi"
    await socket.disconnect()


async def test_queued_positions_while_the_engine_is_busy(engine_env):
    engine = engine_env(CHATGLM_MODEL="fake", CHATGLM_FAKE_DELAY_MS="20", CHATGLM_MAX_BATCH="1")
    engine.backend.max_batch_size = 1  # whether or not the fake reads CHATGLM_MAX_BATCH
    busy, waiting = await open_socket(), await open_socket()  # programs on the open API
    await busy.send_json_to({"type": "chat", "query": LONG})
    await frames_until(busy, "delta")
    await waiting.send_json_to({"type": "chat", "query": "me next", "request_id": "w"})
    frames = await frames_until(waiting, "done", timeout=20)
    queued = [f for f in frames if f["type"] == "queued"]
    assert queued and queued[0] == {"type": "queued", "request_id": "w", "position": 1}
    assert [f["type"] for f in frames].index("queued") < [f["type"] for f in frames].index("delta")
    assert frames[-1]["response"] == "You said: me next"
    await frames_until(busy, "done", timeout=20)
    await busy.disconnect()
    await waiting.disconnect()


async def test_bad_frames_get_error_frames_and_the_socket_stays_open(engine):
    socket = await open_socket(await visitor_session())

    async def error_for(frame) -> dict:
        if isinstance(frame, bytes):
            await socket.send_to(bytes_data=frame)
        elif isinstance(frame, str):
            await socket.send_to(text_data=frame)
        else:
            await socket.send_json_to(frame)
        reply = await socket.receive_json_from()
        assert reply["type"] == "error", reply
        return reply

    assert (await error_for(b"\x00\x01"))["error"]["code"] == "invalid_frame"
    assert (await error_for("{not json"))["error"]["code"] == "invalid_json"
    assert (await error_for("[1, 2]"))["error"]["code"] == "invalid_json"
    assert (await error_for({"type": "dance"}))["error"]["code"] == "unknown_type"
    assert (await error_for({"query": "no type"}))["error"]["param"] == "type"
    reply = await error_for({"type": "chat", "request_id": "m"})
    assert (reply["request_id"], reply["error"]["code"], reply["error"]["param"]) == ("m", "missing", "query")
    assert (await error_for({"type": "chat", "query": "  "}))["error"]["code"] == "empty"
    assert (await error_for({"type": "chat", "query": "x", "params": [1]}))["error"]["param"] == "params"
    reply = await error_for({"type": "chat", "query": "x", "params": {"temperature": 5}})
    assert reply["error"]["param"] == "params.temperature"  # the field as the frame holds it
    assert (await error_for({"type": "chat", "query": "x", "request_id": {"a": 1}}))["error"]["param"] == "request_id"
    limit = settings.CHATGLM["MAX_QUERY_CHARS"]
    assert (await error_for({"type": "chat", "query": "x" * (limit + 1)}))["error"]["code"] == "too_long"
    assert (await error_for({"type": "chat", "query": "x" * (3 * limit)}))["error"]["code"] == "too_large"
    assert (await error_for({"type": "subscribe"}))["error"]["code"] == "missing"
    assert await Conversation.objects.acount() == 0

    await socket.send_json_to({"type": "stop"})  # nothing running: ignored
    await socket.send_json_to({"type": "chat", "query": "still here?"})
    assert (await frames_until(socket, "done"))[-1]["response"] == "You said: still here?"
    await socket.disconnect()


async def test_foreign_and_unknown_conversations_are_not_found(engine):
    owner = await open_socket(await visitor_session())
    await owner.send_json_to({"type": "chat", "query": "mine"})
    done = (await frames_until(owner, "done"))[-1]
    await owner.disconnect()

    stranger = await open_socket(await visitor_session())
    for frame in (
        {"type": "subscribe", "conversation_id": done["conversation_id"]},
        {"type": "chat", "query": "hijack", "conversation_id": done["conversation_id"]},
        {"type": "subscribe", "conversation_id": str(uuid.uuid4())},
        {"type": "subscribe", "conversation_id": "not-a-uuid"},
    ):
        await stranger.send_json_to(frame)
        reply = await stranger.receive_json_from()
        assert reply["type"] == "error" and reply["error"]["code"] == "not_found", (frame, reply)
    program = await open_socket()  # an open-API program does not see a visitor's conversations either
    await program.send_json_to({"type": "subscribe", "conversation_id": done["conversation_id"]})
    assert (await program.receive_json_from())["error"]["code"] == "not_found"
    assert await Message.objects.acount() == 2
    await stranger.disconnect()
    await program.disconnect()


async def test_two_sockets_on_one_conversation_see_the_same_answers(slow_engine):
    session_key = await visitor_session()
    tab1, tab2 = await open_socket(session_key), await open_socket(session_key)
    await tab1.send_json_to({"type": "chat", "query": LONG, "request_id": "t1"})
    start = (await frames_until(tab1, "start"))[-1]
    await tab2.send_json_to({"type": "subscribe", "conversation_id": start["conversation_id"]})
    seen1 = await frames_until(tab1, "done")
    seen2 = await frames_until(tab2, "done")
    full = "You said: " + LONG
    assert text_of(seen1) == seen1[-1]["response"] == full  # the asking tab: nothing twice
    assert text_of(seen2) == seen2[-1]["response"] == full
    assert seen2[-1]["request_id"] is None and seen2[-1]["message_id"] == start["message_id"]
    assert [f["type"] for f in seen2].count("start") == 1
    assert await tab1.receive_nothing(0.3)  # no second copy from the group
    assert await tab2.receive_nothing(0.1)

    # The other way round: the first tab follows the conversation it asked in.
    await tab2.send_json_to({"type": "chat", "query": "from tab two", "conversation_id": start["conversation_id"]})
    seen2 = await frames_until(tab2, "done")
    seen1 = await frames_until(tab1, "done")
    assert seen1[0]["type"] == "start" and seen1[0]["message_id"] == seen2[0]["message_id"]
    assert text_of(seen1) == text_of(seen2) == "You said: from tab two"
    assert await tab1.receive_nothing(0.3)
    await tab1.disconnect()
    await tab2.disconnect()


async def test_frame_flood_closes_with_4429(engine):
    socket = await open_socket(await visitor_session())
    for _ in range(60):
        await socket.send_to(text_data=json.dumps({"type": "stop"}))
    outputs = []
    while not outputs or outputs[-1]["type"] != "websocket.close":
        outputs.append(await socket.receive_output())
    assert outputs[-1] == {"type": "websocket.close", "code": 4429}
    assert json.loads(outputs[-2]["text"])["error"]["code"] == "rate_limited"
    await socket.wait()


@pytest.mark.parametrize("headers", [
    [(b"host", b"localhost")],
    [(b"origin", b"http://evil.example"), (b"host", b"localhost")],
])
async def test_foreign_or_missing_origin_is_rejected(engine, headers):
    socket = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await socket.connect()
    assert not connected


async def test_a_tab_following_a_conversation_sees_an_answer_asked_over_sse(slow_engine):
    """The page's /stream fallback in one tab; another tab's socket follows the conversation."""
    from django.test import AsyncClient

    session_key = await visitor_session()
    browser = AsyncClient()
    browser.cookies[settings.SESSION_COOKIE_NAME] = session_key
    first = await browser.post("/chat", {"query": "first"}, content_type="application/json")
    conversation_id = first.json()["conversation_id"]

    tab = await open_socket(session_key)
    await tab.send_json_to({"type": "subscribe", "conversation_id": conversation_id})
    assert (await tab.receive_json_from())["type"] == "subscribed"
    response = await browser.post("/stream", {"query": "asked over SSE", "conversation_id": conversation_id},
                                  content_type="application/json")
    frames = await frames_until(tab, "done")  # the SSE response itself is left unread
    assert frames[0]["type"] == "start" and frames[0]["request_id"] is None
    assert frames[-1]["response"] == "You said: asked over SSE"
    assert text_of(frames) == frames[-1]["response"]
    await response.streaming_content.aclose()
    await tab.disconnect()


async def test_an_answer_nobody_else_follows_sends_no_deltas_through_the_channel_layer(slow_engine, monkeypatch):
    """The asking socket writes its own frames; the layer hears only that the answer started
    and ended (for other tabs), not each delta."""
    from channels.layers import get_channel_layer

    socket = await open_socket(await visitor_session())
    layer = get_channel_layer()
    sent, original = [], layer.group_send

    async def recording(group, message):
        sent.append(message["type"])
        return await original(group, message)

    monkeypatch.setattr(layer, "group_send", recording)
    await socket.send_json_to({"type": "chat", "query": LONG})
    frames = await frames_until(socket, "done")
    assert len([f for f in frames if f["type"] == "delta"]) > 2
    assert text_of(frames) == frames[-1]["response"] == "You said: " + LONG
    for _ in range(200):  # the broadcaster announces the end on its own, after the socket's `done`
        if "turn.done" in sent:
            break
        await asyncio.sleep(0.01)
    assert "turn.delta" not in sent
    assert sent.count("turn.start") == sent.count("turn.done") == 1
    await socket.disconnect()
