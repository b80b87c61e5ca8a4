"""CHATGLM_REQUIRE_LOGIN: no anonymous visitors, so with API keys set nobody chats without
either a key or an account (a program posing as a browser included)."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import AsyncClient

from chat.models import Conversation
from chatglm_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def require_login(settings):
    settings.CHATGLM = {**settings.CHATGLM, "REQUIRE_LOGIN": True, "API_KEYS": ["bot:sk-bot"]}
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


def posing_as_a_browser() -> tuple[AsyncClient, dict]:
    """A program that invents a session cookie and a matching CSRF cookie and header."""
    client = AsyncClient(enforce_csrf_checks=True)
    client.cookies[django_settings.SESSION_COOKIE_NAME] = "made-up-session"
    client.cookies[django_settings.CSRF_COOKIE_NAME] = "a" * 32
    return client, {"X-CSRFToken": "a" * 32}


async def test_a_program_cannot_chat_by_posing_as_a_browser(engine):
    client, headers = posing_as_a_browser()
    # /chat is for programs only once keys are set; /stream (the page's fallback) wants a login.
    for url, code in (("/chat", "invalid_api_key"), ("/stream", "login_required")):
        r = await client.post(url, json.dumps({"query": "q"}), content_type="application/json", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == code
    r = await client.get("/api/conversations")
    assert r.status_code == 401
    assert await Conversation.objects.acount() == 0
    # ... while a program with its key still may.
    keyed = await AsyncClient().post("/chat", json.dumps({"query": "q"}), content_type="application/json",
                                     headers={"Authorization": "Bearer sk-bot"})
    assert keyed.status_code == 200


async def test_the_page_asks_to_log_in_and_an_account_chats(engine, alice):
    anonymous = await AsyncClient().get("/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")
    client = AsyncClient(enforce_csrf_checks=True)
    await sync_to_async(client.force_login)(alice)
    page = await client.get("/")
    assert page.status_code == 200
    token = page.cookies[django_settings.CSRF_COOKIE_NAME].value
    r = await client.post("/stream", json.dumps({"query": "hello"}), content_type="application/json",
                          headers={"X-CSRFToken": token})
    assert r.status_code == 200
    body = b"".join([chunk async for chunk in r.streaming_content]).decode()
    assert "You said: hello" in body
    assert (await Conversation.objects.aget(user=alice)).user_id == alice.pk


async def test_an_anonymous_socket_is_refused(engine):
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    await session.asave()
    socket = WebsocketCommunicator(application, "/ws/chat/", headers=[
        (b"origin", b"http://localhost"), (b"host", b"localhost"),
        (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={session.session_key}".encode()),
    ])
    connected, _ = await socket.connect()
    assert connected  # accepted, then told why, then closed
    frame = await socket.receive_json_from()
    assert frame["type"] == "error" and frame["error"]["code"] == "login_required"
    assert (await socket.receive_output())["code"] == 4401
