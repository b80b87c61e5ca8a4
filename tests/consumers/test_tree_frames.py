"""`chat` frames naming a parent message: edit as a sibling question, regenerate an answer,
bad parents refused; and the seed API's conversation_id continuing the current path."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from chat import tree
from chat.models import Conversation, Message, Role

from .test_chat_consumer import answer_row, frames_until, open_socket, visitor_session

pytestmark = pytest.mark.django_db(transaction=True)


async def ask(socket, **frame):
    await socket.send_json_to({"type": "chat", **frame})
    frames = await frames_until(socket, "done", "error")
    return frames[0], frames[-1]


async def test_edit_and_regenerate_over_the_socket(engine):
    socket = await open_socket(await visitor_session())
    start, _ = await ask(socket, query="one")
    cid = start["conversation_id"]
    _, _ = await ask(socket, query="two", conversation_id=cid)
    q2 = await Message.objects.aget(conversation_id=cid, content="two")

    start, done = await ask(socket, query="TWO [[fake:prompt]]", conversation_id=cid, parent_id=q2.parent_id)
    assert done["type"] == "done" and start["question_id"] != q2.pk
    assert done["response"] == "Prompt: user: one | assistant: You said: one | user: TWO [[fake:prompt]]"
    assert (await Message.objects.aget(pk=start["question_id"])).parent_id == q2.parent_id

    start, done = await ask(socket, conversation_id=cid, parent_id=q2.pk)  # regenerate "two"
    assert done["response"] == "You said: two" and start["question_id"] == q2.pk
    assert await Message.objects.filter(parent_id=q2.pk).acount() == 2
    await answer_row(start["message_id"])

    _, error = await ask(socket, query="x", conversation_id=cid, parent_id=10**9)
    assert error["type"] == "error" and error["error"]["param"] == "parent_id"
    _, error = await ask(socket, query="x", conversation_id=cid, parent_id="7")
    assert error["error"]["param"] == "parent_id"
    _, error = await ask(socket, conversation_id=cid, parent_id=start["message_id"])  # an answer needs a query
    assert error["error"]["param"] == "query"
    await socket.disconnect()


def test_seed_api_continues_the_current_path(engine):
    client = Client()
    first = client.post("/chat", json.dumps({"query": "one"}), content_type="application/json").json()
    cid = first["conversation_id"]
    client.post("/chat", json.dumps({"query": "two", "conversation_id": cid}), content_type="application/json")
    conversation = Conversation.objects.get(pk=cid)
    a1 = Message.objects.get(conversation=conversation, content="You said: one")
    # Another branch after the first answer, made current.
    q = Message.objects.create(conversation=conversation, parent=a1, position=4, role=Role.USER, content="other")
    a = Message.objects.create(conversation=conversation, parent=q, position=5, role=Role.ASSISTANT, content="B",
                               finish_reason="stop")
    Conversation.objects.filter(pk=cid).update(current_leaf=a)
    reply = client.post("/chat", json.dumps({"query": "[[fake:prompt]]", "conversation_id": cid}),
                        content_type="application/json").json()
    assert "user: other | assistant: B" in reply["response"] and "two" not in reply["response"]
    path = [m.content for m in tree.current_path(Conversation.objects.get(pk=cid))]
    assert path[:4] == ["one", "You said: one", "other", "B"] and path[4] == "[[fake:prompt]]"
