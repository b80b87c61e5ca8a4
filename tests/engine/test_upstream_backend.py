"""The upstream backend against a real OpenAI-compatible server on loopback: this project's
own server with the fake model (it speaks /v1/chat/completions like vLLM does)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from chat.engine.backends import resolve_backend_name
from chat.engine.backends.upstream import UpstreamBackend
from chat.engine.config import EngineConfig
from chat.engine.constraints import Constraint, UnsupportedConstraint
from chat.engine.scheduler import Engine
from chat.engine.vocabulary import (
    EngineUnavailable,
    GenerationParams,
    GenerationResult,
    TextDelta,
)
from tests.server import free_port


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    from tests.server import ServerFactory

    factory = ServerFactory(tmp_path_factory.mktemp("upstream"))
    server = factory.start(env={"CHATGLM_FAKE_DELAY_MS": "20", "CHATGLM_API_KEYS": "site:sk-up"})
    yield server
    factory.stop_all()


def engine_for(upstream, **overrides):
    config = EngineConfig(upstream_url=f"{upstream.url}/v1", upstream_api_key="sk-up", **overrides)
    assert resolve_backend_name(config) == "openai"
    engine = Engine(lambda: UpstreamBackend(config))
    engine.wait_ready(30)
    return engine


async def run(engine, text, params=GenerationParams()):
    events = [e async for e in engine.stream([{"role": "user", "content": text}], params)]
    return "".join(e.text for e in events if isinstance(e, TextDelta)), events[-1]


async def test_streams_whole_characters_with_the_upstream_usage(upstream):
    engine = engine_for(upstream)
    assert engine.info.model_id == "fake" and engine.info.backend == "openai" and engine.info.device == "upstream"
    text, result = await run(engine, "你好🙂")
    assert text == result.text == "You said: 你好🙂" and result.finish_reason == "stop"
    assert result.completion_tokens == 11 and result.prompt_tokens > 0  # the upstream's own count
    engine.stop()


async def test_requests_run_concurrently_upstream(upstream):
    engine = engine_for(upstream)
    started = time.perf_counter()
    results = await asyncio.gather(*(run(engine, f"question {i}") for i in range(4)))
    elapsed = time.perf_counter() - started
    assert [r[0] for r in results] == [f"You said: question {i}" for i in range(4)]
    one = time.perf_counter()
    await run(engine, "question 0")
    # Four at once took about as long as one: nothing waited for another (bounded loosely).
    assert elapsed < 3 * (time.perf_counter() - one)
    engine.stop()


async def test_stop_strings_budget_and_cancellation(upstream):
    engine = engine_for(upstream)
    text, result = await run(engine, "alpha beta gamma", GenerationParams(stop=("gamma",)))
    assert text == "You said: alpha beta " and result.finish_reason == "stop"
    text, result = await run(engine, "alpha beta gamma", GenerationParams(max_new_tokens=4))
    assert result.finish_reason == "length"
    request = engine.submit([{"role": "user", "content": "long " * 50}], GenerationParams())
    async for event in request.events():
        if isinstance(event, TextDelta):
            request.cancel()
        if isinstance(event, GenerationResult):
            assert event.finish_reason == "cancelled" and len(event.text) < 100
    for _ in range(100):  # the upstream sees the closed request and stops too
        if httpx.get(f"{upstream.url}/healthz").json()["running"] == 0:
            break
        await asyncio.sleep(0.02)
    assert httpx.get(f"{upstream.url}/healthz").json()["running"] == 0
    engine.stop()


async def test_max_length_counts_the_prompt_as_on_every_backend(upstream):
    """The seed API's max_length is prompt + answer here too (the prompt as this backend
    estimates it): a limit the prompt alone fills leaves no room for an answer."""
    engine = engine_for(upstream)
    prompt = engine.backend.count_prompt_tokens([{"role": "user", "content": "alpha beta gamma"}])
    text, result = await run(engine, "alpha beta gamma", GenerationParams(max_length=prompt))
    assert text == "" and result.finish_reason == "length"
    text, result = await run(engine, "alpha beta gamma", GenerationParams(max_length=prompt + 3))
    assert result.finish_reason == "length" and 0 < result.completion_tokens <= 3
    engine.stop()


async def test_upstream_failure_mid_stream_is_an_error_result(upstream):
    engine = engine_for(upstream)
    _, result = await run(engine, "[[fake:error]] please")
    assert result.finish_reason == "error" and "upstream" in result.error
    engine.stop()


def test_unreachable_upstream_fails_to_load():
    config = EngineConfig(upstream_url=f"http://127.0.0.1:{free_port()}/v1")
    engine = Engine(lambda: UpstreamBackend(config))
    with pytest.raises(EngineUnavailable, match="did not list its models"):
        engine.wait_ready(30)


def test_wrong_upstream_key_fails_to_load(upstream):
    engine = Engine(lambda: UpstreamBackend(EngineConfig(upstream_url=f"{upstream.url}/v1", upstream_api_key="nope")))
    with pytest.raises(EngineUnavailable, match="401"):
        engine.wait_ready(30)


def test_serve_with_an_upstream(upstream, server_factory):
    site = server_factory.start(model="default", args=("--upstream-url", f"{upstream.url}/v1"),
                                env={"CHATGLM_UPSTREAM_API_KEY": "sk-up"})
    health = httpx.get(f"{site.url}/healthz").json()
    assert health["backend"] == "openai" and health["model"] == "fake" and health["device"] == "upstream"
    assert httpx.post(f"{site.url}/chat", json={"query": "via upstream"}, timeout=30).json()["response"] == "You said: via upstream"


def test_credentials_in_the_upstream_url_never_show(upstream):
    """httpx sends URL credentials as Basic auth (this upstream wants its Bearer key, so the load
    fails): the message that reaches the log and a 503 names the host, not the password."""
    url = upstream.url.replace("http://", "http://user:hunter2@") + "/v1"
    engine = Engine(lambda: UpstreamBackend(EngineConfig(upstream_url=url)))
    with pytest.raises(EngineUnavailable) as failure:
        engine.wait_ready(30)
    assert "hunter2" not in str(failure.value) and upstream.url[7:] in str(failure.value)


def test_the_api_key_wins_over_credentials_in_the_url(upstream):
    """With both, CHATGLM_UPSTREAM_API_KEY is sent (as Bearer) and the URL's user:password is not."""
    url = upstream.url.replace("http://", "http://user:hunter2@") + "/v1"
    backend = UpstreamBackend(EngineConfig(upstream_url=url, upstream_api_key="sk-up"))
    assert "hunter2" not in backend.base_url
    engine = Engine(lambda: backend)
    assert engine.wait_ready(30).model_id == "fake"
    engine.stop()


async def test_tool_calls_pass_through(upstream):
    """Tools, a forced tool_choice, and the call and its result in history reach the upstream;
    its streamed `tool_calls` come back as calls (the upstream here: the fake model's server)."""
    engine = engine_for(upstream)
    tools = [{"name": "get_time", "parameters": {"type": "object", "properties": {}}},
             {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    messages = [{"role": "system", "content": "", "tools": tools},
                {"role": "user", "content": '[[fake:call get_weather {"city": "Oslo"}]]'}]
    result = [e async for e in engine.stream(messages, GenerationParams())][-1]
    [call] = result.tool_calls
    assert (call.name, call.arguments, result.text) == ("get_weather", '{"city": "Oslo"}', "")
    assert call.id.startswith("call_")
    forced = [e async for e in engine.stream(messages[:1] + [{"role": "user", "content": "hi"}],
                                             GenerationParams(tool_choice="function:get_weather"))][-1]
    assert [c.name for c in forced.tool_calls] == ["get_weather"]
    follow_up = messages + [
        {"role": "assistant", "content": "", "tool_calls": [call.as_dict()]},
        {"role": "tool", "content": "sunny", "tool_call_id": call.id, "name": "get_weather"}]
    events = [e async for e in engine.stream(follow_up, GenerationParams())]
    assert events[-1].text == "The tool said: sunny" and not events[-1].tool_calls
    engine.stop()


async def test_sampling_parameters_pass_through_and_logprobs_come_back(upstream):
    """Penalties, logit_bias, seed and logprobs reach the upstream (this project's own server,
    which validates them: a value it refused would end the answer as an error), and the
    upstream's logprobs come back lined up with the text."""
    engine = engine_for(upstream)
    params = GenerationParams(frequency_penalty=0.5, presence_penalty=0.5, logit_bias=((65, 3.0),), seed=4, logprobs=1)
    text, result = await run(engine, "你好🙂", params)
    assert result.finish_reason == "stop" and text == "You said: 你好🙂"
    assert b"".join(e.bytes for e in result.logprobs).decode() == text
    assert all(e.logprob == 0.0 and len(e.top) == 1 for e in result.logprobs)
    _, refused = await run(engine, "hi", GenerationParams(logit_bias=((4 << 24, 1.0),)))  # not in its vocabulary
    assert refused.finish_reason == "error"
    engine.stop()


async def test_response_format_is_passed_to_the_upstream(upstream):
    """The upstream (this project's server, fake model) enforces the schema: its answer is the
    schema's document; a Lark grammar, which an OpenAI API cannot carry, is refused at submit."""
    engine = engine_for(upstream)
    schema = {"type": "object", "properties": {"said": {"type": "string"}}, "required": ["said"]}
    text, result = await run(engine, "hi", GenerationParams(constraint=Constraint.of_schema(schema)))
    assert json.loads(text) == {"said": "You said: hi"} and result.finish_reason == "stop"
    text, _ = await run(engine, "hi", GenerationParams(constraint=Constraint.json_object()))
    assert json.loads(text) == {}
    with pytest.raises(UnsupportedConstraint):
        engine.submit([{"role": "user", "content": "hi"}], GenerationParams(constraint=Constraint(lark='start: "a"')))
    engine.stop()
