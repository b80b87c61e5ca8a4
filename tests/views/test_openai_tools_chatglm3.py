"""A real ChatGLM3 model calls a tool, end to end: a tiny checkpoint whose weights answer with
`get_weather(city="Paris")` in ChatGLM3's syntax (tests/chatglm_tool_model.py), served by the
native `chatglm` backend, called with the official `openai` client, streamed and not, and the
follow-up turn with the tool's result (the weights answer it with text)."""

import json

import openai
import pytest

from tests.chatglm_tool_model import ANSWER, CALL_ARGUMENTS, CALL_NAME, build
from tests.server import ServerFactory

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
MODEL = "chatglm3-tool-call"  # the checkpoint directory's name
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("chatglm3-tools")
    model = build(root / MODEL)
    factory = ServerFactory(root)
    server = factory.start(model=str(model), args=("--backend", "chatglm"),
                           env={"CHATGLM_CACHE_DIR": str(root / "models")})
    yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)
    factory.stop_all()


def test_the_model_calls_the_tool_and_answers_the_result(client):
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER], temperature=0)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == CALL_NAME
    assert json.loads(call.function.arguments) == CALL_ARGUMENTS

    messages = QUESTION + [choice.message.model_dump(exclude_none=True),
                           {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 22}'}]
    follow_up = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], temperature=0)
    assert follow_up.choices[0].finish_reason == "stop"
    assert follow_up.choices[0].message.content == ANSWER
    assert not follow_up.choices[0].message.tool_calls


def test_a_streamed_call(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER], temperature=0,
                                                 stream=True))
    assert all(not c.choices or not c.choices[0].delta.content for c in chunks)  # no call syntax as text
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    [call] = calls
    assert call.index == 0 and call.id.startswith("call_") and call.function.name == CALL_NAME
    assert json.loads(call.function.arguments) == CALL_ARGUMENTS
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_without_tools_the_answer_is_text(client):
    """The same tokens without `tools` offered: nothing parses them as a call."""
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == 'get_weather\n```python\ntool_call(city="Paris")\n```'
