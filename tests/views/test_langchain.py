"""LangChain's OpenAI chat model, unmodified, against a live server (fake model: it calls a tool
when a message says `[[fake:call NAME ARGS]]`, and answers a JSON Schema with its smallest
document, see chat/engine/backends/fake.py)."""

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.server import ServerFactory


class Weather(BaseModel):
    """The weather of a city."""

    city: str


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("langchain-server"))
    server = factory.start(env={"CHATGLM_FAKE_DELAY_MS": "1"})
    yield ChatOpenAI(base_url=f"{server.url}/v1", api_key="x", model="fake", max_retries=0, timeout=30)
    factory.stop_all()


@pytest.mark.parametrize("streaming", [False, True])
def test_bind_tools_returns_tool_calls_and_takes_their_results(chat, streaming):
    model = chat.bind_tools([Weather])
    question = HumanMessage('Weather in Paris? [[fake:call Weather {"city": "Paris"}]]')
    if streaming:
        answer = None
        for chunk in model.stream([question]):
            answer = chunk if answer is None else answer + chunk
    else:
        answer = model.invoke([question])
    [call] = answer.tool_calls
    assert call["name"] == "Weather" and call["args"] == {"city": "Paris"} and call["id"].startswith("call_")
    follow_up = model.invoke([question, answer, ToolMessage("22 degrees", tool_call_id=call["id"])])
    assert follow_up.content == "The tool said: 22 degrees" and not follow_up.tool_calls


def test_structured_output_by_function_calling(chat):
    structured = chat.with_structured_output(Person, method="function_calling")
    person = structured.invoke('Who? [[fake:call Person {"name": "Ada", "age": 36}]]')
    assert person == Person(name="Ada", age=36)


def test_structured_output_by_json_schema(chat):
    person = chat.with_structured_output(Person, method="json_schema").invoke("Describe a person")
    assert isinstance(person, Person) and isinstance(person.name, str) and person.age == 0
