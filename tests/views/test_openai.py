"""The OpenAI-compatible API through Django's AsyncClient: shapes, validation, streaming, errors."""

import asyncio
import json

import pytest

from chat.models import Conversation, Message
from chat.openai_protocol import conversation
from tests.views.sse_client import parse, read_stream

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/v1/chat/completions"


def body(content="你好🙂", **extra):
    return {"model": "fake", "messages": [{"role": "user", "content": content}], **extra}


async def post(client, data, headers=None):
    return await client.post(URL, data, content_type="application/json", headers=headers or {})


async def chunks(response) -> list:
    """The `data:` payloads of a stream, in order (comments left out)."""
    raw = await read_stream(response)
    assert "event:" not in raw  # OpenAI streams are bare `data:` lines
    return [data for name, data in parse(raw) if name != "comment"]


def assert_error(response, status, param=None, code=None, type=None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    if type is not None:
        assert error["type"] == type, error
    return error


# -- answers ----------------------------------------------------------------------------------


async def test_completion_shape(engine, async_client):
    r = await post(async_client, body())
    assert r.status_code == 200, r.content
    data = r.json()
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int)
    assert data["model"] == "fake"
    [choice] = data["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "You said: 你好🙂"
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_content_parts_are_joined(engine, async_client):
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    r = await post(async_client, body(parts))
    assert r.status_code == 200, r.content
    assert r.json()["choices"][0]["message"]["content"] == "You said: one\ntwo"


# What SDKs and LangChain send by default: every parameter at its no-op value is accepted.
NOOP_DEFAULTS = dict(frequency_penalty=0, presence_penalty=0.0, logprobs=False, top_logprobs=0, logit_bias={}, n=1,
                     tools=[], tool_choice="none", parallel_tool_calls=True, response_format={"type": "text"},
                     modalities=["text"], service_tier="auto", metadata={}, audio=None, reasoning_effort=None,
                     user="u1", safety_identifier="s1", prompt_cache_key="k", seed=7, temperature=0.3, top_p=0.9,
                     max_tokens=None, stream_options={"include_usage": True, "include_obfuscation": False})


async def test_noop_values_are_accepted(engine, async_client):
    r = await post(async_client, body(**NOOP_DEFAULTS))
    assert r.status_code == 200, r.content
    assert r.json()["choices"][0]["message"]["content"] == "You said: 你好🙂"


# Parameters this server does not honour: refused with a 400 naming them, never dropped.
UNSUPPORTED = [
    # Honoured, so not here: tools (tests/views/test_openai_tools.py), the sampling surface
    # (tests/views/test_openai_sampling.py).
    {"functions": [{"name": "f"}]}, {"function_call": {"name": "f"}},
    {"modalities": ["text", "audio"]}, {"audio": {"voice": "alloy"}}, {"service_tier": "flex"},
    {"prediction": {"type": "content", "content": "x"}}, {"reasoning_effort": "low"}, {"verbosity": "low"},
    {"web_search_options": {}}, {"metadata": {"a": "b"}}, {"stream_options": {"include_obfuscation": True}},
]


@pytest.mark.parametrize("change", UNSUPPORTED, ids=lambda c: json.dumps(c)[:40])
async def test_unsupported_parameters_are_refused(engine, async_client, change):
    r = await post(async_client, body(**change))
    [name] = change
    param = "stream_options.include_obfuscation" if name == "stream_options" else name
    error = assert_error(r, 400, param=param, code="unsupported_parameter", type="invalid_request_error")
    assert f"'{param}' is not supported by this server" in error["message"]
    assert not await Conversation.objects.aexists()


async def test_unknown_fields_are_refused(engine, async_client):
    r = await post(async_client, body(whatever={"x": 1}))
    error = assert_error(r, 400, param="whatever", code="unknown_parameter")
    assert "Unrecognized request argument supplied: whatever" in error["message"]
    r = await post(async_client, body(stream_options={"include_usage": True, "x": 1}))
    assert_error(r, 400, param="stream_options.x", code="unknown_parameter")
    r = await post(async_client, {"model": "fake", "messages": [{"role": "user", "content": "hi", "name": "ann"}]})
    assert_error(r, 400, param="messages[0].name", code="unsupported_parameter")
    r = await post(async_client, {"model": "fake", "messages": [{"role": "user", "content": "hi", "extra": 1}]})
    assert_error(r, 400, param="messages[0].extra", code="unknown_parameter")
    assert not await Conversation.objects.aexists()


async def test_an_answer_message_appended_as_sent(engine, async_client):
    """A client appends the answer's message as the SDK returns it (with its empty fields)."""
    answer = {"role": "assistant", "content": "You said: one", "refusal": None, "annotations": [], "audio": None,
              "function_call": None, "tool_calls": None}
    r = await post(async_client, {"model": "fake", "messages": [m("user", "one"), answer, m("user", "two")]})
    assert r.status_code == 200, r.content


async def test_store_false_is_not_saved(engine, async_client):
    r = await post(async_client, body(store=False))
    assert r.status_code == 200, r.content
    assert not await Conversation.objects.aexists()
    r = await post(async_client, body(store=True))
    assert r.status_code == 200, r.content
    assert await Conversation.objects.acount() == 1


async def test_stream_shape(engine_env, async_client):
    # Steps slow enough for the reader to keep up: deltas that pile up come as one chunk.
    engine_env(CHATGLM_FAKE_DELAY_MS="10")
    r = await post(async_client, body(stream=True))
    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/event-stream")
    items = await chunks(r)
    assert items[-1] == "[DONE]"
    objects = items[:-1]
    assert all(o["object"] == "chat.completion.chunk" and o["model"] == "fake" for o in objects)
    assert len({o["id"] for o in objects}) == 1 and objects[0]["id"].startswith("chatcmpl-")
    assert objects[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert objects[-1]["choices"][0]["delta"] == {}
    assert objects[-1]["choices"][0]["finish_reason"] == "stop"
    content = [o["choices"][0]["delta"]["content"] for o in objects[1:-1]]
    assert len(content) > 1 and all(content)
    assert all("\ufffd" not in c for c in content)
    assert "".join(content) == "You said: 你好🙂"
    assert all(o["choices"][0]["finish_reason"] is None for o in objects[:-1])
    assert all("usage" not in o for o in objects)


async def test_stream_include_usage(engine, async_client):
    r = await post(async_client, body(stream=True, stream_options={"include_usage": True}))
    items = await chunks(r)
    assert items[-1] == "[DONE]"
    last = items[-2]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] > 0
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    assert items[-3]["choices"][0]["finish_reason"] == "stop"
    assert all(o["usage"] is None for o in items[:-2])


@pytest.mark.parametrize("stop", ["beta", ["zzz", "beta"]])
async def test_stop_string_cuts_the_answer(engine, async_client, stop):
    r = await post(async_client, body("alpha beta gamma", stop=stop))
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "You said: alpha "
    assert choice["finish_reason"] == "stop"

    r = await post(async_client, body("alpha beta gamma", stop=stop, stream=True))
    content = [o["choices"][0]["delta"].get("content", "") for o in (await chunks(r))[:-1]]
    assert "".join(content) == "You said: alpha "  # not even the stop string's first letter left


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_ends_with_length(engine, async_client, name):
    r = await post(async_client, body("a long enough question", **{name: 3}))
    data = r.json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3
    assert "You said: a long enough question".startswith(data["choices"][0]["message"]["content"])

    r = await post(async_client, body("a long enough question", stream=True, **{name: 3}))
    items = await chunks(r)
    assert items[-2]["choices"][0]["finish_reason"] == "length"


# -- validation -------------------------------------------------------------------------------

INVALID = [
    ({"model": None}, "model"),
    ({"model": 5}, "model"),
    ({"stream": "yes"}, "stream"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": "x"}, "max_completion_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": [1]}, "top_p"),
    ({"stop": 5}, "stop"),
    ({"stop": ["ok", 1]}, "stop"),
    ({"n": "1"}, "n"),
    ({"n": 0}, "n"),
    ({"n": 9}, "n"),  # past the server's MAX_CHOICES
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ({"presence_penalty": "x"}, "presence_penalty"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),  # needs logprobs: true
    ({"logit_bias": [1]}, "logit_bias"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"65": 101}}, "logit_bias"),
    ({"logit_bias": {str(4 << 24): 1}}, "logit_bias"),  # not in the (fake) model's vocabulary
    ({"seed": "x"}, "seed"),
    ({"user": 5}, "user"),
    ({"stream_options": "x"}, "stream_options"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"messages": None}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "messages"),
    ({"messages": [{"role": "system", "content": "be brief"}]}, "messages"),
]


@pytest.mark.parametrize("change, param", INVALID, ids=[p + ":" + json.dumps(c)[:40] for c, p in INVALID])
async def test_invalid_requests(engine, async_client, change, param):
    r = await post(async_client, {k: v for k, v in {**body(), **change}.items() if v is not None})
    assert_error(r, 400, param=param, type="invalid_request_error")
    assert not await Conversation.objects.aexists()  # nothing was started or stored


async def test_unknown_model(engine, async_client):
    r = await post(async_client, body(model="gpt-4o"))
    assert_error(r, 404, code="model_not_found", param="model")


async def test_malformed_json_and_method(engine, async_client):
    r = await async_client.post(URL, "{not json", content_type="application/json")
    assert_error(r, 400, code="invalid_json")
    r = await async_client.get(URL)
    assert_error(r, 405)


# -- messages to a turn -----------------------------------------------------------------------


def m(role, content):
    return {"role": role, "content": content}


def test_message_mapping():
    system, history, query = conversation([
        m("system", "Be brief."), m("user", "q1"), m("assistant", "a1"),
        m("developer", "Answer in English."), m("user", "q2"), m("assistant", "a2"), m("user", "q3"),
    ])
    assert system == "Be brief.\n\nAnswer in English."
    assert history == [("q1", "a1"), ("q2", "a2")]
    assert query == "q3"


def test_message_mapping_merges_runs_of_a_role():
    system, history, query = conversation([
        m("system", ""), m("assistant", "Hello! Ask me."), m("user", "q1"), m("user", "q1b"), m("assistant", "a1"),
        m("assistant", None), m("assistant", "a1b"), m("user", "q2"), m("user", "q2b"),
    ])
    assert system is None
    assert history == [("", "Hello! Ask me."), ("q1\n\nq1b", "a1\n\na1b")]
    assert query == "q2\n\nq2b"


async def test_saved_as_openai_conversation(engine, async_client):
    r = await post(async_client, {"model": "fake", "messages": [
        m("system", "You are terse."), m("user", "q1"), m("assistant", "a1"), m("user", "q2")]})
    assert r.status_code == 200, r.content
    conv = await Conversation.objects.aget()
    assert conv.source == "openai"
    assert conv.system_prompt == "You are terse."
    assert conv.model == "fake"
    rows = [(msg.role, msg.content, msg.finish_reason) async for msg in Message.objects.filter(conversation=conv)]
    assert rows == [("system", "You are terse.", ""), ("user", "q1", ""), ("assistant", "a1", "stop"),
                    ("user", "q2", ""), ("assistant", "You said: q2", "stop")]


async def test_not_stored_when_disabled(engine, async_client, settings):
    settings.CHATGLM = {**settings.CHATGLM, "STORE_API_TURNS": False}
    r = await post(async_client, body())
    assert r.status_code == 200
    assert not await Conversation.objects.aexists()


# -- models and auth --------------------------------------------------------------------------


async def test_models(engine, async_client):
    r = await async_client.get("/v1/models")
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list"
    [model] = data["data"]
    assert model["id"] == "fake" and model["object"] == "model" and model["owned_by"] == "chatglm-django"
    assert isinstance(model["created"], int)
    r = await async_client.get("/v1/models/fake")
    assert r.json() == model
    assert_error(await async_client.get("/v1/models/gpt-4o"), 404, code="model_not_found")
    assert_error(await async_client.get("/v1/models/org/gpt-4o"), 404, code="model_not_found")


async def test_api_keys(engine, async_client, settings):
    settings.CHATGLM = {**settings.CHATGLM, "API_KEYS": ["alice:sk-test"]}
    assert_error(await post(async_client, body()), 401, type="authentication_error")
    assert_error(await post(async_client, body(), {"Authorization": "Bearer sk-wrong"}), 401)
    assert_error(await async_client.get("/v1/models"), 401)
    good = {"Authorization": "Bearer sk-test"}
    assert (await async_client.get("/v1/models", headers=good)).status_code == 200
    r = await post(async_client, body(), good)
    assert r.status_code == 200, r.content
    conv = await Conversation.objects.aget()
    assert conv.api_key_name == "alice"


async def test_open_api_accepts_any_key(engine, async_client):
    r = await post(async_client, body(), {"Authorization": "Bearer anything"})
    assert r.status_code == 200


# -- failures, disconnects, overload ----------------------------------------------------------


async def test_engine_error(engine, async_client):
    r = await post(async_client, body("please [[fake:error]] now"))
    assert_error(r, 500, type="server_error", code="generation_failed")

    r = await post(async_client, body("please [[fake:error]] now", stream=True))
    items = await chunks(r)
    assert "[DONE]" not in items
    error = items[-1]["error"]
    assert error["type"] == "server_error" and error["code"] == "generation_failed"
    msg = await Message.objects.filter(role="assistant").alast()
    assert msg.finish_reason == "error"


async def wait_for_finish(message_filter, timeout=10.0) -> Message:
    async with asyncio.timeout(timeout):
        while True:
            msg = await Message.objects.filter(**message_filter).alast()
            if msg is not None and msg.finish_reason:
                return msg
            await asyncio.sleep(0.05)


async def test_disconnect_cancels_the_generation(engine_env, async_client):
    engine_env(CHATGLM_FAKE_DELAY_MS="20")
    r = await post(async_client, body("x" * 300, stream=True))
    stream = r.streaming_content.__aiter__()
    assert b'"role":"assistant"' in await stream.__anext__()
    assert b'"content":"' in await stream.__anext__()
    # The client goes away: Django cancels the task that reads the body (docs/pitfalls.md#sse-cancel).
    while True:
        reader = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)  # the reader now waits for the next chunk, or already has it
        if reader.cancel():
            break
        assert b'"content":"' in await reader
    with pytest.raises(asyncio.CancelledError):
        await reader
    msg = await wait_for_finish({"role": "assistant"})
    assert msg.finish_reason == "cancelled"
    assert msg.content and "You said: xxxxxxx".startswith(msg.content[:16])
    assert len(msg.content) < len("You said: ") + 300


async def test_queue_full_is_429(engine_env, async_client):
    # A batch of one: the second request stays queued (a larger batch would admit it at the
    # next step, and whether the third then finds the queue full would be a race).
    engine_env(CHATGLM_MAX_QUEUE="1", CHATGLM_MAX_BATCH="1", CHATGLM_FAKE_DELAY_MS="30")
    running = await post(async_client, body("first " * 20, stream=True))
    stream = running.streaming_content.__aiter__()
    await stream.__anext__()
    await stream.__anext__()  # a content chunk: the first turn is generating
    waiting = await post(async_client, body("second", stream=True))  # fills the queue of one
    r = await post(async_client, body("third"))
    assert_error(r, 429, type="rate_limit_error", code="overloaded")
    assert int(r["Retry-After"]) >= 1
    r = await post(async_client, body("third", stream=True))
    assert_error(r, 429)
    async for _ in stream:
        pass
    assert (await chunks(waiting))[-1] == "[DONE]"
