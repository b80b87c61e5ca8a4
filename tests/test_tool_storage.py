"""Saved tool calls and results: messages of their own kinds, replayed as steps, exported, in the admin."""

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client

from chat import exports, tree
from chat.models import Conversation, FinishReason, Message, Role

pytestmark = pytest.mark.django_db

CALL = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}


@pytest.fixture
def conversation():
    conversation = Conversation.objects.create(title="weather", source="openai")
    rows = [dict(role=Role.USER, content="Weather in Paris?"),
            dict(role=Role.ASSISTANT, content="", tool_calls=[CALL], finish_reason=FinishReason.STOP),
            dict(role=Role.TOOL, content="22 degrees", tool_call_id="call_1", tool_name="get_weather"),
            dict(role=Role.ASSISTANT, content="It is 22 degrees.", finish_reason=FinishReason.STOP)]
    for position, row in enumerate(rows):
        Message.objects.create(conversation=conversation, position=position, **row)
    return conversation


def test_history_replays_the_steps(conversation):
    [(question, answer)] = tree.pairs(tree.current_path(conversation))
    assert question == "Weather in Paris?"
    assert answer == [{"role": "assistant", "content": "", "tool_calls": [CALL]},
                      {"role": "tool", "content": "22 degrees", "tool_call_id": "call_1", "name": "get_weather"},
                      {"role": "assistant", "content": "It is 22 degrees."}]


def test_exports_show_calls_and_results(conversation):
    messages = list(conversation.messages.all())
    markdown = exports.conversation_markdown(conversation, messages)
    assert "Calls `get_weather` (`call_1`):" in markdown and '{"city": "Paris"}' in markdown
    assert "## Tool result" in markdown and "_(result of `get_weather`, call `call_1`)_" in markdown
    data = json.loads(exports.conversation_json(conversation, messages))
    assert [m["tool_calls"] for m in data["messages"]][1] == [CALL]
    assert data["messages"][2]["tool_call_id"] == "call_1"


def test_admin_lists_the_calls(conversation):
    admin = User.objects.create_superuser("admin", "a@example.com", "pw")
    client = Client()
    client.force_login(admin)
    page = client.get("/admin/chat/message/").content.decode()
    assert "calls get_weather" in page and "Tool result" in page
