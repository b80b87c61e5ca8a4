"""The official `openai` client against a live `manage.py serve` (fake model): the API is what it expects."""

import httpx
import openai
import pytest

from tests.server import ServerFactory


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """An open server and one with API keys, shared by this module's tests (each start costs seconds)."""
    factory = ServerFactory(tmp_path_factory.mktemp("openai-servers"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def server(servers):
    return servers.start(env={"CHATGLM_FAKE_DELAY_MS": "2"})


@pytest.fixture(scope="module")
def keyed_server(servers):
    return servers.start(env={"CHATGLM_API_KEYS": "alice:sk-alice", "CHATGLM_FAKE_DELAY_MS": "2"},
                         data_dir=servers.tmp_path / "keyed")


def client_for(server, api_key="anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0, timeout=30)


def test_create(server):
    completion = client_for(server).chat.completions.create(
        model="fake", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好🙂"}],
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "fake"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "You said: 你好🙂"
    assert choice.finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0


def test_create_stream(server):
    stream = client_for(server).chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "héllo wörld ✓"}], stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "You said: héllo wörld ✓"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_stream_include_usage(server):
    chunks = list(client_for(server).chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "count me"}], stream=True,
        stream_options={"include_usage": True},
    ))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_stop_and_max_tokens(server):
    client = client_for(server)
    completion = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "alpha beta gamma"}], stop=["beta"],
    )
    assert completion.choices[0].message.content == "You said: alpha "
    assert completion.choices[0].finish_reason == "stop"

    stream = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "alpha beta gamma"}], stop="beta", stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "You said: alpha "

    completion = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "a long question"}], max_tokens=3,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3
    stream = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "a long question"}], max_completion_tokens=3,
        stream=True,
    )
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == "length"


def test_models(server):
    client = client_for(server)
    models = client.models.list()
    assert [m.id for m in models] == ["fake"]
    assert models.data[0].owned_by == "chatglm-django"
    assert client.models.retrieve("fake").id == "fake"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_errors(server):
    client = client_for(server)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}], n=9)
    assert caught.value.param == "n"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="fake", messages=[])
    assert caught.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"temperature": "hot"})
    assert caught.value.param == "temperature"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "[[fake:error]]!"}])
    with pytest.raises(openai.APIError) as caught:  # mid-stream: a `data: {"error": ...}` line
        list(client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "fail [[fake:error]] halfway"}], stream=True))
    assert caught.value.body["code"] == "generation_failed"


def test_api_keys(keyed_server):
    with pytest.raises(openai.AuthenticationError):
        client_for(keyed_server, "sk-wrong").chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        client_for(keyed_server, "sk-wrong").models.list()
    r = httpx.get(f"{keyed_server.url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    completion = client_for(keyed_server, "sk-alice").chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "You said: hi"


def test_raw_stream_is_data_lines_only(server):
    """What a hand-written client sees: `data:` lines, `: ` comments, and `data: [DONE]` last."""
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=30,
                      json={"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith(("data: ", ":")) for line in lines), lines
    assert lines[-1] == "data: [DONE]"


def test_queue_full_is_rate_limit_error(servers):
    server = servers.start(env={"CHATGLM_MAX_QUEUE": "1", "CHATGLM_MAX_BATCH": "1", "CHATGLM_FAKE_DELAY_MS": "30"},
                           data_dir=servers.tmp_path / "small-queue")
    request = {"model": "fake", "messages": [{"role": "user", "content": "x" * 40}], "stream": True}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=request) as running:
            lines = running.iter_lines()
            while '"content":"Y' not in next(lines):  # the first turn is generating
                pass
            with http.stream("POST", "/v1/chat/completions", json=request) as waiting:  # fills the queue
                assert waiting.status_code == 200
                with pytest.raises(openai.RateLimitError) as caught:
                    client_for(server).chat.completions.create(
                        model="fake", messages=[{"role": "user", "content": "hi"}])
                assert int(caught.value.response.headers["retry-after"]) >= 1


@pytest.mark.slow
def test_the_default_model_through_the_official_client(servers, default_model_dir):
    """The embedded SmolLM2 behind the OpenAI API, as a drop-in client sees it (the torch path;
    tests/test_llamacpp_serving.py does the same through llama.cpp, the default)."""
    server = servers.start(model="", args=("--backend", "transformers"),
                           env={"CHATGLM_CACHE_DIR": str(default_model_dir.parent)},
                           data_dir=servers.tmp_path / "default-model")
    client = client_for(server)
    [model] = client.models.list().data
    assert model.id == "SmolLM2-135M-Instruct"
    messages = [{"role": "system", "content": "You are a geography tutor."},
                {"role": "user", "content": "What is the capital of France?"}]
    completion = client.chat.completions.create(model=model.id, messages=messages, max_tokens=40)
    assert "Paris" in completion.choices[0].message.content
    chunks = list(client.chat.completions.create(model=model.id, messages=messages, max_tokens=40, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content  # greedy by default: the same answer
    assert "\ufffd" not in text and chunks[-1].usage.completion_tokens > 0


def test_sampling_surface_through_the_sdk(server):
    """n choices, logprobs, penalties, logit_bias and a seed, as the official client sends and reads them."""
    client = client_for(server)
    answer = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "héllo"}], n=2, seed=3, logprobs=True, top_logprobs=1,
        frequency_penalty=0.5, presence_penalty=0.5, logit_bias={"65": -5})
    assert [c.index for c in answer.choices] == [0, 1]
    for choice in answer.choices:
        assert b"".join(bytes(t.bytes) for t in choice.logprobs.content).decode() == choice.message.content
        assert all(len(t.top_logprobs) == 1 for t in choice.logprobs.content)
    stream = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "héllo"}], n=2,
                                            logprobs=True, stream=True)
    texts = {0: "", 1: ""}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: answer.choices[0].message.content, 1: answer.choices[1].message.content}
    legacy = client.completions.create(model="fake", prompt="héllo", logprobs=2, max_tokens=40)
    assert legacy.choices[0].logprobs.text_offset[0] == 0
