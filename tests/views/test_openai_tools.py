"""Tool calling through the official `openai` client against a live server (fake model: it calls
tools in GLM-4's syntax when a message says `[[fake:call NAME ARGS]]`, see chat/engine/backends/fake.py)."""

import json
import sqlite3

import openai
import pytest

from tests.server import ServerFactory

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("tools-server"))
    yield factory.start(env={"CHATGLM_FAKE_DELAY_MS": "1"})
    factory.stop_all()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=30)


def ask(content):
    return [{"role": "user", "content": content}]


def test_a_call_and_the_follow_up_turn(client, server):
    messages = ask('Weather in Paris? [[fake:call get_weather {"city": "Paris"}]]')
    completion = client.chat.completions.create(model="fake", messages=messages, tools=[WEATHER, TIME])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 22}'}]
    follow_up = client.chat.completions.create(model="fake", messages=messages, tools=[WEATHER, TIME])
    assert follow_up.choices[0].finish_reason == "stop"
    assert follow_up.choices[0].message.content == 'The tool said: {"temperature": 22}'

    # Stored: the question, the call, the tool's result and the answer, each of its own kind.
    with sqlite3.connect(server.env["CHATGLM_DATA_DIR"] + "/db.sqlite3") as db:
        rows = db.execute("SELECT role, content, tool_calls, tool_call_id, tool_name FROM chat_message "
                          "WHERE conversation_id = (SELECT conversation_id FROM chat_message "
                          "WHERE role = 'tool' ORDER BY id DESC LIMIT 1) ORDER BY position").fetchall()
    assert [r[0] for r in rows] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(rows[1][2]) == [{"id": call.id, "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert rows[2][1:] == ('{"temperature": 22}', "[]", call.id, "get_weather")


def test_streamed_calls_assemble(client):
    content = 'Both [[fake:call get_weather {"city": "Rome"}]] [[fake:call get_time {}]]'
    with client.chat.completions.stream(model="fake", messages=ask(content), tools=[WEATHER, TIME]) as stream:
        chunks = [event for event in stream if event.type == "chunk"]
        final = stream.get_final_completion()
    assert not any(c.chunk.choices and c.chunk.choices[0].delta.content for c in chunks)  # no call syntax leaks
    calls = final.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Rome"}), ("get_time", {})]
    assert final.choices[0].finish_reason == "tool_calls"
    assert len({c.id for c in calls}) == 2


def test_parallel_tool_calls_false_keeps_one(client):
    content = '[[fake:call get_weather {"city": "Rome"}]] [[fake:call get_time {}]]'
    completion = client.chat.completions.create(model="fake", messages=ask(content), tools=[WEATHER, TIME],
                                                parallel_tool_calls=False)
    assert [c.function.name for c in completion.choices[0].message.tool_calls] == ["get_weather"]


def test_text_answers_stay_text(client):
    """An answer that starts like a tool's name but is not a call streams whole, character for character."""
    stream = client.chat.completions.create(model="fake", messages=ask("get_weather is a tool"), tools=[WEATHER],
                                            stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: get_weather is a tool"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_invalid_arguments_are_answered_as_text(client):
    completion = client.chat.completions.create(
        model="fake", messages=ask("[[fake:call get_weather {city: Paris}]]"), tools=[WEATHER])
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert choice.message.content == "get_weather\n{city: Paris}"


def test_forced_tool_choice(client):
    named = client.chat.completions.create(model="fake", messages=ask("hi"), tools=[WEATHER, TIME],
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c.function.name for c in named.choices[0].message.tool_calls] == ["get_time"]
    required = client.chat.completions.create(model="fake", messages=ask("hi"), tools=[WEATHER, TIME],
                                              tool_choice="required")
    assert [c.function.name for c in required.choices[0].message.tool_calls] == ["get_weather"]
    none = client.chat.completions.create(model="fake", messages=ask("[[fake:call get_time {}]]"),
                                          tools=[WEATHER, TIME], tool_choice="none")
    assert none.choices[0].message.tool_calls is None  # the model is not shown the tools


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {**WEATHER["function"], "strict": True}}]},
     "tools[0].function.strict"),
    ({"functions": [WEATHER["function"]]}, "functions"),
])
def test_bad_tool_requests_are_refused(client, extra, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="fake", messages=ask("hi"), **extra)
    assert raised.value.body["param"] == param


def test_tool_messages_must_answer_a_call(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="fake", tools=[WEATHER], messages=[
            *ask("hi"), {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_2", "content": "x"}])
    assert raised.value.body["param"] == "messages[2].tool_call_id"


def test_responses_api_refuses_function_tools(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="fake", input="hi", tools=[{"type": "function", **WEATHER["function"]}])
    assert raised.value.body["param"] == "tools"
    assert "/v1/chat/completions" in raised.value.body["message"]
