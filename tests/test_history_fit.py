"""History kept up to the model's context: the most recent pairs (at most CHATGLM_MAX_HISTORY)
whose prompt, as the backend itself counts it, leaves the answer's room in the context.

Each test finds what really fits by trying every suffix with the backend's own counter
(`largest_fitting_suffix`, a plain scan independent of fit_history's bisection), then checks
what the site kept (`history_truncated`) and what it sent (`usage.prompt_tokens`).
"""

from __future__ import annotations

import json
import random

import pytest

from chat.engine import GenerationParams
from chat.turns import fit_history, to_messages

pytestmark = pytest.mark.django_db(transaction=True)
JSON = "application/json"


def largest_fitting_suffix(backend, history, query, limit, room, max_pairs, system_prompt=""):
    """(pairs kept, their prompt tokens): the longest suffix of at most `max_pairs` pairs whose
    prompt plus `room` fits `limit`, found by trying each length from the longest down."""
    for count in range(min(len(history), max_pairs), -1, -1):
        kept = history[len(history) - count :] if count else []
        tokens = backend.count_prompt_tokens(to_messages(system_prompt, kept, query))
        if tokens + room <= limit:
            return count, tokens
    return 0, backend.count_prompt_tokens(to_messages(system_prompt, [], query))


def conversation(pairs: int, seed: int, words: tuple[int, int]) -> list[list[str]]:
    """Pairs of uneven lengths (multi-byte text too), so that every suffix costs differently."""
    rng = random.Random(seed)
    vocabulary = ["sea", "ship", "harbour", "wind", "海", "船", "🙂", "lighthouse", "tide", "sail", "north"]

    def text():
        return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(*words)))

    return [[text(), text()] for _ in range(pairs)]


async def ask(client, body):
    r = await client.post("/chat", json.dumps(body), content_type=JSON)
    assert r.status_code == 200, r.content
    return r.json()


# -- the fake model: a small context, many history sizes ---------------------------------------


@pytest.mark.parametrize("pairs", [0, 1, 3, 5, 6, 7, 8, 9, 12])
@pytest.mark.parametrize("context", [300, 700, 4096])
async def test_fake_keeps_the_largest_suffix_that_fits(engine_env, async_client, settings, pairs, context):
    engine = engine_env(CHATGLM_FAKE_CONTEXT=str(context))
    max_new_tokens = 40  # under a quarter of every context here: the room is the whole budget
    history = conversation(pairs, seed=pairs * 1000 + context, words=(5, 30))
    query = "and now?"
    expected, prompt_tokens = largest_fitting_suffix(
        engine.backend, history, query, context, max_new_tokens, settings.CHATGLM["MAX_HISTORY"])
    body = await ask(async_client, {"query": query, "history": history, "max_new_tokens": max_new_tokens})
    assert body["history_truncated"] == pairs - expected
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["history"][:pairs] == history  # the client still gets its whole history back
    assert body["finish_reason"] == "stop" and body["response"] == f"You said: {query}"


@pytest.mark.parametrize("max_history", [0, 1, 3, 8])
@pytest.mark.parametrize("pairs", [2, 5, 7, 10])
async def test_max_history_counts_pairs(engine_env, async_client, settings, max_history, pairs):
    """With room to spare, exactly min(pairs, CHATGLM_MAX_HISTORY) of the newest pairs are kept
    (5 to 7 pairs under a limit of 8 used to keep 2n - 8 of them)."""
    settings.CHATGLM = {**settings.CHATGLM, "MAX_HISTORY": max_history}
    engine = engine_env(CHATGLM_FAKE_CONTEXT="100000")
    history = conversation(pairs, seed=pairs, words=(3, 10))
    body = await ask(async_client, {"query": "q", "history": history})
    kept = min(pairs, max_history)
    assert body["history_truncated"] == pairs - kept
    assert body["usage"]["prompt_tokens"] == engine.backend.count_prompt_tokens(
        to_messages("", history[pairs - kept :] if kept else [], "q"))


@pytest.mark.parametrize("max_length", [150, 260, 500])
async def test_max_length_is_the_limit_when_smaller(engine_env, async_client, settings, max_length):
    """The seed API's max_length bounds prompt + answer: history is fitted to it, so the answer
    keeps its budget instead of ending at once with `length`."""
    engine = engine_env(CHATGLM_FAKE_CONTEXT="4096")
    history = conversation(8, seed=max_length, words=(5, 20))
    max_new_tokens = max_length // 4
    expected, prompt_tokens = largest_fitting_suffix(
        engine.backend, history, "go on", max_length, max_new_tokens, settings.CHATGLM["MAX_HISTORY"])
    body = await ask(async_client, {"query": "go on", "history": history,
                                    "max_length": max_length, "max_new_tokens": max_new_tokens})
    assert body["history_truncated"] == 8 - expected and body["usage"]["prompt_tokens"] == prompt_tokens
    assert prompt_tokens + body["usage"]["completion_tokens"] <= max_length
    assert body["response"] == "You said: go on"


def test_system_prompt_counts_against_the_context(engine_env, settings):
    engine = engine_env(CHATGLM_FAKE_CONTEXT="400")
    history = conversation(8, seed=7, words=(5, 15))
    system = "You answer briefly. " * 8
    params = GenerationParams(max_new_tokens=50)
    for system_prompt in ("", system):
        expected, prompt_tokens = largest_fitting_suffix(
            engine.backend, history, "q", 400, 50, settings.CHATGLM["MAX_HISTORY"], system_prompt)
        messages, truncated = fit_history(engine, system_prompt, history, "q", params)
        assert truncated == 8 - expected and engine.count_prompt_tokens(messages) == prompt_tokens
    assert fit_history(engine, system, history, "q", params)[1] > fit_history(engine, "", history, "q", params)[1]


def test_query_alone_is_sent_when_nothing_else_fits(engine_env):
    engine = engine_env(CHATGLM_FAKE_CONTEXT="64")
    messages, truncated = fit_history(engine, "", [["a" * 50, "b" * 50]] * 3, "x" * 200, GenerationParams())
    assert truncated == 3 and messages == [{"role": "user", "content": "x" * 200}]


# -- the real default model through the transformers backend ----------------------------------


@pytest.fixture
def smol_engine(engine_env, default_model_dir):
    return engine_env(CHATGLM_MODEL=str(default_model_dir), CHATGLM_BACKEND="transformers")


def long_pairs(count: int, seed: int) -> list[list[str]]:
    """Pairs of about 215 SmolLM2 tokens each, as in the issue's report."""
    return conversation(count, seed=seed, words=(50, 100))


@pytest.mark.slow
async def test_default_model_keeps_six_pairs_of_215_tokens(smol_engine, async_client):
    """The issue's case: 6 pairs of ~215 tokens in an 8192-token context all fit (it kept 2)."""
    history = long_pairs(6, seed=1)
    query = "Summarize our conversation."
    body = await ask(async_client, {"query": query, "history": history, "max_new_tokens": 1})
    assert smol_engine.info.context_length == 8192
    assert body["history_truncated"] == 0
    assert body["usage"]["prompt_tokens"] == smol_engine.backend.count_prompt_tokens(to_messages("", history, query))
    assert body["usage"]["prompt_tokens"] > 6 * 150


@pytest.mark.slow
@pytest.mark.parametrize("pairs", [2, 4, 5, 6, 7, 9])
async def test_default_model_fills_max_length(smol_engine, async_client, settings, pairs):
    """History sizes around a limit of 1100 tokens (max_length): prefills stay short enough to
    run for real, and usage.prompt_tokens is what the model was really given."""
    history = long_pairs(pairs, seed=pairs)
    expected, prompt_tokens = largest_fitting_suffix(
        smol_engine.backend, history, "Go on.", 1100, 64, settings.CHATGLM["MAX_HISTORY"])
    body = await ask(async_client, {"query": "Go on.", "history": history, "max_length": 1100, "max_new_tokens": 64})
    assert body["history_truncated"] == pairs - expected
    assert body["usage"]["prompt_tokens"] == prompt_tokens


@pytest.mark.slow
@pytest.mark.parametrize("pairs,words,context_drops", [
    (8, (150, 250), False), (12, (150, 250), False), (8, (350, 500), True), (8, (500, 700), True),
    (5, (500, 800), True),
])
def test_default_model_fills_its_whole_context(smol_engine, settings, pairs, words, context_drops):
    """Near the real 8192-token context (no generation: prefilling 8k tokens on 2 cores takes
    minutes): the kept history is the largest suffix that leaves the answer's 512 tokens."""
    history = conversation(pairs, seed=sum(words), words=words)
    max_pairs = settings.CHATGLM["MAX_HISTORY"]
    expected, prompt_tokens = largest_fitting_suffix(smol_engine.backend, history, "Go on.", 8192, 512, max_pairs)
    assert (expected < min(pairs, max_pairs)) == context_drops  # the case is the one meant
    messages, truncated = fit_history(smol_engine, "", history, "Go on.", GenerationParams())
    assert truncated == pairs - expected
    assert smol_engine.count_prompt_tokens(messages) == prompt_tokens
