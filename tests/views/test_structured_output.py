"""Structured output (response_format / text.format) through every protocol, with the fake model,
which answers the schema's smallest document with its echo as strings (backends/fake.py).
Real constrained decoding is tested in tests/engine/test_constraints.py."""

from __future__ import annotations

import json

import openai
import pydantic
import pytest

from chat.models import Message, Role
from tests.consumers.test_chat_consumer import frames_until, open_socket, visitor_session
from tests.views.test_openai import assert_error, body, post

pytestmark = pytest.mark.django_db(transaction=True)

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 3}},
          "required": ["name", "age"], "additionalProperties": False}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


async def test_chat_completions_json_schema_and_json_object(engine, async_client):
    r = await post(async_client, body("hi", response_format=JSON_SCHEMA))
    assert r.status_code == 200, r.content
    content = r.json()["choices"][0]["message"]["content"]
    assert json.loads(content) == {"name": "You said: hi", "age": 3}
    stored = await Message.objects.filter(role=Role.ASSISTANT).alast()
    assert stored.params["constraint"] == {"json_schema": PERSON}  # stored as plain JSON
    r = await post(async_client, body("hi", response_format={"type": "json_object"}))
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {}
    r = await post(async_client, body("hi", response_format={"type": "text"}))
    assert r.json()["choices"][0]["message"]["content"] == "You said: hi"


@pytest.mark.parametrize("response_format, param", [
    ("json", "response_format"),
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {}}, "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": [1]}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {}, "strict": "yes"}},
     "response_format.json_schema.strict"),
    ({"type": "json_object", "schema": {}}, "response_format.schema"),
    # Well-formed, but no grammar can be made of it: refused when the turn is admitted.
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "foo"}}}, "response_format"),
])
async def test_bad_response_format_is_a_400_naming_it(engine_env, async_client, response_format, param):
    engine_env(CHATGLM_MODEL="fake", CHATGLM_FAKE_DELAY_MS="0")
    r = await post(async_client, body("hi", response_format=response_format))
    assert_error(r, 400, param=param)


async def test_responses_text_format(engine, async_client):
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    r = await async_client.post("/v1/responses", {"model": "fake", "input": "yo", "text": {"format": fmt}},
                                content_type="application/json")
    assert r.status_code == 200, r.content
    assert json.loads(r.json()["output"][0]["content"][0]["text"]) == {"name": "You said: yo", "age": 3}
    assert r.json()["text"] == {"format": fmt}
    r = await async_client.post("/v1/responses", {"model": "fake", "input": "yo",
                                                  "text": {"format": {"type": "json_schema", "name": "p"}} | {}},
                                content_type="application/json")
    assert r.status_code == 200  # a schema-less json_schema: any JSON
    r = await async_client.post("/v1/responses", {"model": "fake", "input": "yo", "text": {"format": {
        "type": "json_schema", "name": "p", "schema": {"type": "foo"}}}}, content_type="application/json")
    assert_error(r, 400, param="text.format")


async def test_seed_api_and_websocket_take_response_format(engine, async_client):
    r = await async_client.post("/chat", {"query": "hi", "response_format": JSON_SCHEMA}, content_type="application/json")
    assert r.status_code == 200, r.content
    assert json.loads(r.json()["response"]) == {"name": "You said: hi", "age": 3}
    r = await async_client.post("/chat", {"query": "hi", "response_format": {"type": "json_schema"}},
                                content_type="application/json")
    assert_error(r, 400, param="response_format.json_schema")

    socket = await open_socket(await visitor_session())
    await socket.send_json_to({"type": "chat", "query": "ws", "params": {"response_format": JSON_SCHEMA}})
    done = (await frames_until(socket, "done"))[-1]
    assert json.loads(done["response"]) == {"name": "You said: ws", "age": 3}
    await socket.send_json_to({"type": "chat", "query": "ws", "params": {"response_format": {"type": "yaml"}}})
    error = (await frames_until(socket, "error"))[-1]
    assert error["error"]["param"] == "params.response_format.type"
    await socket.disconnect()


class Person(pydantic.BaseModel):
    name: str
    age: int


def test_openai_sdk_parse_end_to_end(fake_server):
    client = openai.OpenAI(base_url=f"{fake_server.url}/v1", api_key="x", max_retries=0, timeout=30)
    completion = client.chat.completions.parse(
        model="fake", messages=[{"role": "user", "content": "Ada, 36"}], response_format=Person)
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person) and person.name == "You said: Ada, 36"
    response = client.responses.parse(model="fake", input="Ada", text_format=Person)
    assert response.output_parsed.name == "You said: Ada"
