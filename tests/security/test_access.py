"""Who may chat in each access mode (README "Security"): with API keys set the program API needs
a key whatever cookies come along; the page chats with a session the server issued."""

from __future__ import annotations

import json

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
KEY = {"Authorization": "Bearer sk-bot"}


@pytest.fixture(autouse=True)
def keys(settings):
    settings.CHATGLM = {**settings.CHATGLM, "API_KEYS": ["bot:sk-bot"]}
    channel_layers.backends = {}
    yield settings
    channel_layers.backends = {}


async def post(client, url, body=None, **headers):
    return await client.post(url, json.dumps(body or {"query": "q"}), content_type="application/json",
                             headers=headers)


async def body_of(response) -> str:
    return b"".join([chunk async for chunk in response.streaming_content]).decode()


def made_up_pair() -> tuple[AsyncClient, dict]:
    """A script that invents a session cookie and a matching CSRF cookie and header."""
    client = AsyncClient(enforce_csrf_checks=True)
    client.cookies[django_settings.SESSION_COOKIE_NAME] = "made-up-session"
    client.cookies[django_settings.CSRF_COOKIE_NAME] = "a" * 32
    return client, {"X-CSRFToken": "a" * 32}


async def page_client(user=None) -> tuple[AsyncClient, dict]:
    """A browser that loaded the page (logged in as `user` if given): its cookies and CSRF header."""
    client = AsyncClient(enforce_csrf_checks=True)
    if user is not None:
        await sync_to_async(client.force_login)(user)
    page = await client.get("/")
    assert page.status_code == 200
    return client, {"X-CSRFToken": page.cookies[django_settings.CSRF_COOKIE_NAME].value}


async def socket_with(session_key: str | None, path="/ws/chat/"):
    headers = list(SITE)
    if session_key:
        headers.append((b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={session_key}".encode()))
    socket = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await socket.connect()
    assert connected
    return socket


async def refused_socket(session_key: str | None) -> str:
    socket = await socket_with(session_key)
    frame = await socket.receive_json_from()
    assert (await socket.receive_output())["code"] == 4401
    await socket.disconnect()
    return frame["error"]["code"]


async def test_a_made_up_session_and_csrf_pair_opens_nothing(engine):
    client, csrf = made_up_pair()
    for url in ("/chat", "/stream", "/clear", "/v1/chat/completions"):
        r = await post(client, url, {"query": "q", "model": "fake", "messages": [{"role": "user", "content": "q"}]},
                       **csrf)
        assert r.status_code == 401, url
    assert (await client.get("/clear")).status_code == 401
    assert await refused_socket("made-up-session") == "invalid_api_key"
    assert await Conversation.objects.acount() == 0


async def test_a_real_session_that_never_loaded_the_page_cannot_chat(engine):
    session = SessionStore()
    session["something"] = 1
    await session.asave()
    client = AsyncClient(enforce_csrf_checks=True)
    client.cookies[django_settings.SESSION_COOKIE_NAME] = session.session_key
    client.cookies[django_settings.CSRF_COOKIE_NAME] = "a" * 32
    r = await post(client, "/stream", **{"X-CSRFToken": "a" * 32})
    assert r.status_code == 401 and r.json()["error"]["code"] == "page_session_required"
    assert await refused_socket(session.session_key) == "page_session_required"


async def test_the_page_session_chats_over_stream_and_socket_but_not_the_program_api(engine):
    client, csrf = await page_client()
    r = await post(client, "/stream", {"query": "from the page"}, **csrf)
    assert r.status_code == 200 and "You said: from the page" in await body_of(r)
    for url in ("/chat", "/clear"):
        assert (await post(client, url, **csrf)).status_code == 401, url
    assert (await client.get("/clear")).status_code == 401
    assert (await client.get("/v1/models")).status_code == 401
    socket = await socket_with(client.cookies[django_settings.SESSION_COOKIE_NAME].value)
    await socket.send_json_to({"type": "chat", "query": "over the socket"})
    while (frame := await socket.receive_json_from(timeout=10))["type"] != "done":
        pass
    assert frame["response"] == "You said: over the socket"
    await socket.disconnect()


async def test_the_page_session_still_needs_the_csrf_token_and_its_own_origin(engine):
    client, csrf = await page_client()
    r = await post(client, "/stream")
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    r = await post(client, "/stream", **csrf, Origin="http://localhost:9999")
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    assert await Conversation.objects.acount() == 0


async def test_a_key_opens_everything_whatever_cookies_come_along(engine):
    client, csrf = made_up_pair()
    assert (await post(client, "/chat", **KEY)).status_code == 200
    assert (await client.get("/clear", headers=KEY)).status_code == 200
    assert (await post(client, "/chat", Authorization="Bearer wrong")).status_code == 401


async def test_clear_is_for_keys_and_staff(engine, alice, django_user_model):
    client, csrf = await page_client(alice)
    assert (await client.get("/clear")).status_code == 401
    staff = await sync_to_async(django_user_model.objects.create_user)("root", password="pw-root-123", is_staff=True)
    client, csrf = await page_client(staff)
    assert (await client.get("/clear")).status_code == 200
    assert (await post(client, "/clear")).status_code == 403  # a POST still needs the CSRF token
    assert (await post(client, "/clear", **csrf)).status_code == 200


async def test_with_require_login_only_an_account_chats_from_the_page(engine, keys, alice):
    keys.CHATGLM = {**keys.CHATGLM, "REQUIRE_LOGIN": True}
    assert (await AsyncClient().get("/")).status_code == 302
    client, csrf = await page_client(alice)
    r = await post(client, "/stream", {"query": "hello"}, **csrf)
    assert r.status_code == 200 and "You said: hello" in await body_of(r)
    assert await Conversation.objects.filter(user=alice).acount() == 1


async def test_without_keys_the_api_is_open(engine, keys):
    keys.CHATGLM = {**keys.CHATGLM, "API_KEYS": []}
    assert (await post(AsyncClient(), "/chat")).status_code == 200
    assert (await AsyncClient().get("/clear")).status_code == 200


async def test_a_made_up_session_gets_no_identity_from_the_conversation_api(engine):
    client, csrf = made_up_pair()
    r = await client.post("/api/conversations", "{}", content_type="application/json", headers=csrf)
    assert r.status_code == 401 and r.json()["error"]["code"] == "page_session_required"
    client, csrf = await page_client()
    r = await client.post("/api/conversations", "{}", content_type="application/json", headers=csrf)
    assert r.status_code == 201
    assert await Conversation.objects.acount() == 1
