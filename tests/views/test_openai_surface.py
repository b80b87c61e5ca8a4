"""The rest of the OpenAI surface through Django's AsyncClient: /v1/completions, served model
names (aliases), and OpenAI's JSON 404 for every other path under /v1/."""

import asyncio

import pytest

from chat.models import Conversation
from tests.views.sse_client import parse, read_stream
from tests.views.test_openai import assert_error, wait_for_finish

pytestmark = pytest.mark.django_db(transaction=True)


async def post(client, url, data):
    return await client.post(url, data, content_type="application/json")


# -- /v1/completions --------------------------------------------------------------------------


async def test_completion_shape(engine, async_client):
    r = await post(async_client, "/v1/completions", {"model": "fake", "prompt": "héllo 你好🙂", "max_tokens": 100})
    assert r.status_code == 200, r.content
    data = r.json()
    assert data["id"].startswith("cmpl-") and data["object"] == "text_completion" and data["model"] == "fake"
    assert data["choices"] == [{"text": "You said: héllo 你好🙂", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


async def test_completion_defaults_to_16_tokens_as_openai(engine, async_client):
    r = await post(async_client, "/v1/completions", {"model": "fake", "prompt": "x" * 40})
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 16


async def test_completion_echo_stop_and_prompt_list(engine, async_client):
    r = await post(async_client, "/v1/completions",
                   {"model": "fake", "prompt": ["alpha beta"], "echo": True, "stop": ["beta"], "max_tokens": 50})
    assert r.json()["choices"][0]["text"] == "alpha betaYou said: alpha "


async def test_completion_stream(engine, async_client):
    r = await post(async_client, "/v1/completions", {"model": "fake", "prompt": "héllo ✓", "stream": True,
                                                      "max_tokens": 100, "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    events = [data for name, data in parse(await read_stream(r)) if name != "comment"]
    assert events[-1] == "[DONE]"
    usage_chunk, last = events[-2], events[-3]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    assert last["choices"][0]["finish_reason"] == "stop"
    chunks = events[:-2]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "You said: héllo ✓"


@pytest.mark.parametrize("change, param, code", [
    ({"prompt": None}, "prompt", "missing"),
    ({"prompt": ["a", "b"]}, "prompt", "unsupported_value"),
    ({"prompt": [1, 2, 3]}, "prompt", "unsupported_value"),
    ({"prompt": 5}, "prompt", "invalid_type"),
    ({"prompt": " "}, "prompt", "empty"),
    ({"suffix": "tail"}, "suffix", "unsupported_parameter"),
    ({"best_of": 2, "n": 3}, "best_of", "invalid_value"),
    ({"best_of": 2, "stream": True}, "best_of", "invalid_value"),
    ({"logprobs": 6}, "logprobs", "invalid_value"),
    ({"logprobs": 2, "echo": True}, "logprobs", "unsupported_parameter"),
    ({"n": 9}, "n", "invalid_value"),
    ({"frequency_penalty": 3}, "frequency_penalty", "invalid_value"),
    ({"messages": []}, "messages", "unknown_parameter"),
    ({"max_tokens": 0}, "max_tokens", None),
])
async def test_completion_invalid(engine, async_client, change, param, code):
    data = {k: v for k, v in {"model": "fake", "prompt": "hi", **change}.items() if v is not None}
    assert_error(await post(async_client, "/v1/completions", data), 400, param=param, code=code)
    assert not await Conversation.objects.aexists()


async def test_completion_noop_defaults(engine, async_client):
    """What LangChain's OpenAI LLM and older clients send by default."""
    r = await post(async_client, "/v1/completions", {
        "model": "fake", "prompt": ["hi"], "n": 1, "best_of": 1, "logit_bias": {}, "frequency_penalty": 0,
        "presence_penalty": 0, "logprobs": None, "suffix": None, "echo": False, "temperature": 0.7, "top_p": 1,
        "max_tokens": 256, "seed": 3})
    assert r.status_code == 200, r.content
    assert r.json()["choices"][0]["text"] == "You said: hi"


# -- served model names -----------------------------------------------------------------------


async def test_served_model_names(engine, async_client, settings):
    settings.OPENAI_SERVED_MODEL_NAMES = ["gpt-4o-mini", "chatglm3-6b"]
    r = await async_client.get("/v1/models")
    assert [m["id"] for m in r.json()["data"]] == ["gpt-4o-mini", "chatglm3-6b"]
    assert (await async_client.get("/v1/models/chatglm3-6b")).json()["id"] == "chatglm3-6b"
    assert_error(await async_client.get("/v1/models/fake"), 404, code="model_not_found")
    r = await post(async_client, "/v1/chat/completions",
                   {"model": "chatglm3-6b", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["model"] == "chatglm3-6b"
    r = await post(async_client, "/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi"})
    assert r.json()["model"] == "gpt-4o-mini"
    error = assert_error(await post(async_client, "/v1/chat/completions",
                                    {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}),
                         404, param="model", code="model_not_found")
    assert "'gpt-4o-mini', 'chatglm3-6b'" in error["message"]


# -- other paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [
    ("post", "/v1/embeddings"), ("get", "/v1/files"), ("post", "/v1/images/generations"), ("get", "/v1"),
    ("get", "/v1/"), ("delete", "/v1/batches/b1"), ("get", "/v1/chat/completions/abc"),
])
async def test_unknown_v1_paths_are_openai_json_404(engine, async_client, method, path):
    r = await getattr(async_client, method)(path)
    error = assert_error(r, 404, code="unknown_url", type="invalid_request_error")
    assert f"{method.upper()} {path}" in error["message"]
    assert r["Content-Type"] == "application/json"


# -- a client that closes its stream stops the generation, on every streaming endpoint -----------


@pytest.mark.parametrize("url, data, marker", [
    ("/v1/completions", {"model": "fake", "prompt": "x" * 300, "max_tokens": 1000, "stream": True}, b'"text":"'),
    ("/v1/responses", {"model": "fake", "input": "x" * 300, "stream": True}, b'"delta":"'),
])
async def test_disconnect_cancels_the_generation(engine_env, async_client, url, data, marker):
    engine_env(CHATGLM_FAKE_DELAY_MS="20")
    r = await post(async_client, url, data)
    stream = r.streaming_content.__aiter__()
    while marker not in await stream.__anext__():  # generating
        pass
    while True:  # the client goes away: Django cancels the task that reads the body
        reader = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)
        if reader.cancel():
            break
        await reader
    with pytest.raises(asyncio.CancelledError):
        await reader
    msg = await wait_for_finish({"role": "assistant"})
    assert msg.finish_reason == "cancelled"
    assert msg.content and len(msg.content) < len("You said: ") + 300
