"""A conversation whose answer went through tool calls (made on /v1/chat/completions), then
continued or shown through every other path: the seed API, /v1/responses, the WebSocket, the
page API (conversation, context, exports, shares, search). None may answer a 500, and what each
shows of the tool steps is documented in docs/tools.md."""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import AsyncClient

from chat.engine.backends.fake import FakeBackend
from chat.models import Conversation, Message, Role
from tests.consumers.test_chat_consumer import frames_until, open_socket, visitor_session

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALL_TEXT = 'called get_weather({"city": "Paris"})'


async def post(client, url, body, **kwargs):
    return await client.post(url, json.dumps(body), content_type="application/json", **kwargs)


@pytest.fixture
def no_tool_format(monkeypatch):
    """Call it to make the model behind the server one without a tool-calling format (ChatGLM2,
    SmolLM2's template…), once the tool conversation is made."""
    return lambda: monkeypatch.setattr(FakeBackend, "tools_refusal", lambda self, messages, params: "no tool format")


async def tool_conversation(client) -> Conversation:
    """Ask, get a call, send the tool's result, get the final answer: on the open API."""
    messages = [{"role": "user", "content": 'Weather in Paris? [[fake:call get_weather {"city": "Paris"}]]'}]
    first = (await post(client, "/v1/chat/completions", {"model": "fake", "messages": messages,
                                                          "tools": [WEATHER]})).json()
    message = first["choices"][0]["message"]
    assert message["tool_calls"], first
    messages += [message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "22 <b>degrees</b>"}]
    second = (await post(client, "/v1/chat/completions", {"model": "fake", "messages": messages,
                                                           "tools": [WEATHER]})).json()
    assert second["choices"][0]["message"]["content"] == "The tool said: 22 <b>degrees</b>"
    conversation = await Conversation.objects.filter(messages__role=Role.TOOL).alatest("created_at")
    roles = [m.role async for m in conversation.messages.order_by("position")]
    assert roles == ["user", "assistant", "tool", "assistant"]
    return conversation


async def test_seed_api_history_keeps_string_answers(engine):
    client = AsyncClient()
    conversation = await tool_conversation(client)
    r = await post(client, "/chat", {"query": "[[fake:prompt]] and now?", "conversation_id": str(conversation.id)})
    assert r.status_code == 200, r.content
    body = r.json()
    # The tool-using answer is its final text, a string as the demo's clients expect.
    assert body["history"][0] == ['Weather in Paris? [[fake:call get_weather {"city": "Paris"}]]',
                                  "The tool said: 22 <b>degrees</b>"]
    assert all(isinstance(a, str) for _, a in body["history"])
    # A model with a tool format reads the steps as they were (the call, the result, the answer).
    assert "tool: 22 <b>degrees</b>" in body["response"]


async def test_seed_api_stream_on_a_model_without_tools(engine, no_tool_format):
    client = AsyncClient()
    conversation = await tool_conversation(client)
    no_tool_format()
    r = await post(client, "/chat", {"query": "[[fake:prompt]] and now?", "conversation_id": str(conversation.id)})
    assert r.status_code == 200, r.content
    # Without a tool format the steps reach the model as plain text in the answer.
    assert (f"assistant: [{CALL_TEXT}]\n[get_weather returned: 22 <b>degrees</b>]\n"
            "The tool said: 22 <b>degrees</b>") in r.json()["response"]
    assert "tool:" not in r.json()["response"]


@pytest.mark.parametrize("tools", [True, False])
async def test_responses_previous_response_id(engine, no_tool_format, tools):
    client = AsyncClient()
    conversation = await tool_conversation(client)
    if not tools:
        no_tool_format()
    last = await conversation.messages.order_by("-position").afirst()
    r = await post(client, "/v1/responses", {"model": "fake", "input": "[[fake:prompt]] more",
                                             "previous_response_id": f"resp_{conversation.id.hex}_{last.pk}"})
    assert r.status_code == 200, r.content
    text = r.json()["output"][0]["content"][0]["text"]
    assert "The tool said: 22 <b>degrees</b>" in text
    assert (CALL_TEXT in text) is not tools


async def give_to_visitor(conversation: Conversation) -> str:
    """The conversation, made by a program, handed to a page visitor (as if they had made it)."""
    from django.contrib.sessions.backends.db import SessionStore

    session = await visitor_session()
    visitor = (await SessionStore(session_key=session).aload())["chatglm_visitor"]
    await Conversation.objects.filter(pk=conversation.pk).aupdate(visitor=uuid.UUID(visitor))
    return session


async def test_websocket_continues_it(engine, no_tool_format):
    conversation = await tool_conversation(AsyncClient())
    no_tool_format()
    socket = await open_socket(await give_to_visitor(conversation))
    await socket.send_json_to({"type": "chat", "query": "[[fake:prompt]] next", "conversation_id": str(conversation.id)})
    frames = await frames_until(socket, "done", "error")
    assert frames[-1]["type"] == "done", frames[-1]
    assert CALL_TEXT in frames[-1]["response"]
    await socket.disconnect()


async def test_page_api_shows_it(engine):
    conversation = await tool_conversation(AsyncClient())
    session = await give_to_visitor(conversation)
    from django.conf import settings

    page = AsyncClient()
    page.cookies[settings.SESSION_COOKIE_NAME] = session
    base = f"/api/conversations/{conversation.id}"
    detail = await page.get(base)
    assert detail.status_code == 200, detail.content
    steps = [m for m in detail.json()["messages"] if m["tool_calls"] or m["role"] == "tool"]
    assert [(m["role"], m["tool_name"]) for m in steps] == [("assistant", ""), ("tool", "get_weather")]
    assert (await page.get(f"{base}/context")).status_code == 200
    assert (await page.get(f"{base}/export?format=json")).status_code == 200
    markdown = await page.get(f"{base}/export?format=md")
    assert markdown.status_code == 200 and "get_weather" in markdown.content.decode()
    search = await page.get("/api/search?q=degrees")
    assert search.status_code == 200 and search.json()["results"]

    share = await page.post(f"{base}/shares", headers={"X-CSRFToken": "x"})
    if share.status_code == 403:  # the page's CSRF check: take a token as the page does
        page.cookies[settings.CSRF_COOKIE_NAME] = "a" * 32
        share = await page.post(f"{base}/shares", headers={"X-CSRFToken": "a" * 32})
    assert share.status_code == 201, share.content
    shared = (await Message.objects.filter(conversation=conversation).acount(), share.json())
    snapshot = (await conversation.shares.afirst()).messages
    # The snapshot keeps the steps, so the shared page shows the call and the result.
    assert [m["role"] for m in snapshot] == ["user", "assistant", "tool", "assistant"], shared
    assert snapshot[1]["tool_calls"][0]["name"] == "get_weather" and snapshot[2]["tool_name"] == "get_weather"
