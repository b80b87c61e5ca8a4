"""A WebSocket is bound to its session: a logout closes it, and each turn re-checks the session."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.sessions.backends.db import SessionStore
from django.test import AsyncClient

from chat.models import Conversation
from chatglm_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

SITE = [(b"origin", b"http://localhost"), (b"host", b"localhost")]


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


async def logged_in_page(user) -> tuple[AsyncClient, str, str]:
    client = AsyncClient(enforce_csrf_checks=True)
    await sync_to_async(client.force_login)(user)
    page = await client.get("/")
    return client, client.cookies[django_settings.SESSION_COOKIE_NAME].value, \
        page.cookies[django_settings.CSRF_COOKIE_NAME].value


async def open_socket(session_key: str) -> WebsocketCommunicator:
    cookie = (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={session_key}".encode())
    socket = WebsocketCommunicator(application, "/ws/chat/", headers=[*SITE, cookie])
    connected, _ = await socket.connect()
    assert connected
    return socket


async def chat(socket, query: str) -> dict:
    await socket.send_json_to({"type": "chat", "query": query})
    while (frame := await socket.receive_json_from(timeout=10))["type"] not in ("done", "error"):
        pass
    return frame


async def assert_closed_as_ended(socket, request_id=None) -> None:
    frame = await socket.receive_json_from(timeout=5)
    assert frame["type"] == "error" and frame["error"]["code"] == "session_ended"
    assert frame["request_id"] == request_id
    assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


async def test_logout_closes_the_sessions_sockets_and_only_those(engine, alice):
    client, key, csrf = await logged_in_page(alice)
    _, other_key, _ = await logged_in_page(alice)  # the same account on another device
    socket, other = await open_socket(key), await open_socket(other_key)
    assert (await chat(socket, "before"))["type"] == "done"
    r = await client.post("/accounts/logout/", headers={"X-CSRFToken": csrf})
    assert r.status_code == 302
    await assert_closed_as_ended(socket)
    assert (await chat(other, "elsewhere"))["response"] == "You said: elsewhere"
    await other.disconnect()


async def test_each_turn_rechecks_the_session(engine, alice):
    """The close message can be lost (no shared channel layer): the next turn still finds out."""
    _, key, _ = await logged_in_page(alice)
    socket = await open_socket(key)
    assert (await chat(socket, "one"))["type"] == "done"
    await SessionStore(key).adelete()  # ended without a logout signal (expiry, another process)
    await socket.send_json_to({"type": "chat", "query": "two", "request_id": "r2"})
    await assert_closed_as_ended(socket, "r2")
    assert not await Conversation.objects.filter(messages__content="two").aexists()


async def test_a_password_change_ends_the_socket_at_its_next_turn(engine, alice):
    _, key, _ = await logged_in_page(alice)
    socket = await open_socket(key)
    alice.set_password("a-new-password-456")
    await alice.asave()
    await socket.send_json_to({"type": "chat", "query": "still me?"})
    await assert_closed_as_ended(socket)


async def test_a_visitor_socket_ends_when_the_visitor_logs_in(engine, alice):
    client = AsyncClient(enforce_csrf_checks=True)
    page = await client.get("/")
    # The first conversation makes the visitor's session (without API keys a page load makes none).
    await client.post("/api/conversations", {}, content_type="application/json",
                      headers={"X-CSRFToken": page.cookies[django_settings.CSRF_COOKIE_NAME].value})
    key = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    socket = await open_socket(key)
    assert (await chat(socket, "anonymous"))["type"] == "done"
    r = await client.post("/accounts/login/", {"username": "alice", "password": "pw-alice-123"},
                          headers={"X-CSRFToken": page.cookies[django_settings.CSRF_COOKIE_NAME].value})
    assert r.status_code == 302  # the login cycles the session key: the old one is gone
    await socket.send_json_to({"type": "chat", "query": "who am I"})
    await assert_closed_as_ended(socket)
