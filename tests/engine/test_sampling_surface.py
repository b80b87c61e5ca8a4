"""OpenAI's sampling surface on each backend that decodes for itself, for real: the native
ChatGLM tiny checkpoint and a tiny transformers model (the shared torch decode loop), and
llama.cpp with the embedded SmolLM2 GGUF. logit_bias forces a token, a presence penalty
changes a repetitive greedy answer, logprobs are consistent, a seed reproduces an answer."""

from __future__ import annotations

import math

import pytest

from chat.engine.backends.chatglm import ChatGLMBackend
from chat.engine.backends.llamacpp import LlamaCppBackend
from chat.engine.backends.transformers import TransformersBackend
from chat.engine.config import DEFAULT_MODEL, EngineConfig
from chat.engine.scheduler import Engine
from chat.engine.vocabulary import GenerationParams, GenerationResult, TextDelta
from tests.engine.chatglm_fixtures import checkpoint

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Say hello 你好"}]


@pytest.fixture(scope="module", params=["chatglm", "transformers", "llamacpp"])
def engine(request, tmp_path_factory):
    if request.param == "chatglm":
        factory = lambda: ChatGLMBackend(EngineConfig(model=str(checkpoint("v2")), max_batch_size=4))  # noqa: E731
    elif request.param == "transformers":
        from transformers import AutoTokenizer

        from tests.conftest import default_model_dir  # noqa: F401 - the session fixture's folder
        from tests.engine.test_transformers_backend import build_checkpoint

        path = tmp_path_factory.mktemp("tiny")
        build_checkpoint(path, AutoTokenizer.from_pretrained(request.getfixturevalue("default_model_dir")), "llama")
        factory = lambda: TransformersBackend(EngineConfig(model=str(path), max_batch_size=4))  # noqa: E731
    else:
        factory = lambda: LlamaCppBackend(EngineConfig(model=DEFAULT_MODEL, max_batch_size=4))  # noqa: E731
    engine = Engine(factory)
    engine.wait_ready(180)
    yield engine
    engine.stop()
    if request.param == "llamacpp":
        engine.backend.close()


async def run(engine, **params) -> GenerationResult:
    params = {"temperature": 0, "repetition_penalty": 1.0, "max_new_tokens": 8, **params}
    events = [e async for e in engine.stream(MESSAGES, GenerationParams(**params))]
    result = events[-1]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert "".join(d.text for d in deltas) == result.text
    if result.logprobs is not None:
        assert tuple(e for d in deltas for e in d.logprobs) == result.logprobs
    return result


def token_id(engine, text: str) -> int:
    """A token id whose text is `text`, in the served model's vocabulary."""
    backend = engine.backend
    if isinstance(backend, ChatGLMBackend):
        return backend.tokenizer.encode(text)[-1]
    if isinstance(backend, TransformersBackend):
        return backend.tokenizer.convert_tokens_to_ids(text)
    response = backend._http.post("/tokenize", json={"content": text})
    return response.json()["tokens"][-1]


async def test_logit_bias_forces_a_token(engine):
    forced = token_id(engine, "A")
    plain = await run(engine)
    biased = await run(engine, logit_bias=((forced, 100.0),), logprobs=0)
    assert plain.text != biased.text
    tokens = {e.token for e in biased.logprobs}
    assert biased.completion_tokens == 8 and len(tokens) == 1 and "A" in tokens.pop()


async def test_presence_penalty_changes_a_repetitive_answer(engine):
    forced = token_id(engine, "A")
    # A bias makes the greedy answer repeat one token; the penalties push it down once used.
    repetitive = await run(engine, logit_bias=((forced, 12.0),), max_new_tokens=6, logprobs=0)
    penalised = await run(engine, logit_bias=((forced, 12.0),), max_new_tokens=6, logprobs=0,
                          presence_penalty=2.0, frequency_penalty=2.0)
    def count(result):
        return sum("A" in e.token for e in result.logprobs)

    assert count(repetitive) > count(penalised)


async def test_greedy_logprobs_are_the_most_likely(engine):
    result = await run(engine, logprobs=5)
    assert len(result.logprobs) == result.completion_tokens
    for entry in result.logprobs:
        assert len(entry.top) == 5
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top), abs=1e-4)
        assert sum(math.exp(t.logprob) for t in entry.top) <= 1 + 1e-4
        assert entry.token == entry.top[0].token
    assert b"".join(e.bytes for e in result.logprobs).decode("utf-8", errors="replace").strip() == result.text.strip()


async def test_seed_reproduces_a_sampled_answer(engine):
    first = await run(engine, temperature=1.0, seed=11, max_new_tokens=12)
    again = await run(engine, temperature=1.0, seed=11, max_new_tokens=12)
    assert first.text == again.text
    others = {(await run(engine, temperature=1.0, seed=s, max_new_tokens=12)).text for s in range(12, 16)}
    assert others - {first.text}  # other seeds give other answers: the seed matters
