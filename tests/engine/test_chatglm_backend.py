"""The ChatGLM backend through the engine's Generation contract: golden answers, streaming, limits."""

from __future__ import annotations

import threading

import pytest

from chat.engine.backends import resolve_backend_name
from chat.engine.backends.chatglm import ChatGLMBackend
from chat.engine.config import EngineConfig
from chat.engine.detokenize import REPLACEMENT
from chat.engine.generation import Generation
from chat.engine.vocabulary import (
    GenerationParams,
    GenerationResult,
    Started,
    TextDelta,
)

from .chatglm_fixtures import (
    FAMILIES,
    case_messages,
    checkpoint,
    expected_response,
    golden,
)

GREEDY = GenerationParams(temperature=0, max_new_tokens=32)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def backend(family):
    backend = ChatGLMBackend(EngineConfig(model=str(checkpoint(family)), backend="chatglm"))
    backend.load()
    backend.warmup()
    return backend


class Recorder:
    """A Generation plus the events it emitted."""

    def __init__(self, messages, params=GREEDY, cancel_after_deltas: int | None = None):
        self.events = []
        self.cancel = threading.Event()
        self.cancel_after_deltas = cancel_after_deltas
        self.seq = Generation(messages, params, self._emit, self.cancel)

    def _emit(self, event):
        self.events.append(event)
        if self.cancel_after_deltas is not None and len(self.deltas) >= self.cancel_after_deltas:
            self.cancel.set()

    @property
    def deltas(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, TextDelta)]

    @property
    def result(self) -> GenerationResult:
        [result] = [e for e in self.events if isinstance(e, GenerationResult)]
        return result


def _check_against_golden(family, case, recorder):
    result = recorder.result
    eos_stop = case["stopped_by"] == "eos"
    assert result.finish_reason == ("stop" if eos_stop else "length"), case["id"]
    assert result.completion_tokens == len(case["greedy_ids"]) - eos_stop  # the EOS id is not pushed
    assert result.prompt_tokens == len(case["prompt_ids"])
    assert result.text == expected_response(case), case["id"]
    assert "".join(recorder.deltas) == result.text
    assert all(delta for delta in recorder.deltas)
    # Only the U+FFFD of invalid bytes that the random model really generated, none from a
    # character split across tokens.
    assert sum(d.count(REPLACEMENT) for d in recorder.deltas) == expected_response(case).count(REPLACEMENT)


def test_info_and_prompt_count(family, backend):
    info = backend.info
    assert info.model_id == checkpoint(family).name
    assert info.backend == "chatglm" and info.device == "cpu" and info.dtype == "float32"
    assert info.context_length == {"v1": 2048, "v2": 32768, "v3": 8192}[family]
    assert backend.max_batch_size == 8
    for case in golden(family)["cases"]:
        assert backend.count_prompt_tokens(case_messages(case)) == len(case["prompt_ids"])


def test_each_case_alone_matches_golden(family, backend):
    for case in golden(family)["cases"]:
        recorder = Recorder(case_messages(case))
        backend.generate([recorder.seq])
        assert isinstance(recorder.events[0], Started)
        _check_against_golden(family, case, recorder)


def test_batched_generation_matches_golden(family, backend):
    cases = golden(family)["cases"][-8:]  # includes the EOS-stopped ones: rows leave the batch early
    recorders = [Recorder(case_messages(case)) for case in cases]
    backend.generate([r.seq for r in recorders])
    for case, recorder in zip(cases, recorders):
        _check_against_golden(family, case, recorder)


def test_sequences_joining_a_running_batch_match_golden(family, backend):
    """Continuous batching: cases merged into the batch mid-decode (prompts longer and shorter
    than the running cache) still give the reference's greedy answers exactly."""
    cases = golden(family)["cases"][:6]
    recorders = [Recorder(case_messages(case)) for case in cases]
    waiting = [r.seq for r in recorders[1:]]
    calls = []

    def admit(limit):  # two join at the 3rd step, the rest one by one later
        calls.append(limit)
        step = len(calls)
        taken = waiting[:2] if step == 3 else waiting[:1] if step in (6, 9, 12) else []
        del waiting[: len(taken)]
        return taken

    backend.run([recorders[0].seq], admit)
    assert not waiting
    for case, recorder in zip(cases, recorders):
        _check_against_golden(family, case, recorder)


def test_max_length_counts_prompt_and_answer(family, backend):
    case = golden(family)["cases"][0]
    recorder = Recorder(case_messages(case), GenerationParams(temperature=0, max_length=len(case["prompt_ids"]) + 5))
    backend.generate([recorder.seq])
    assert recorder.result.finish_reason == "length"
    assert recorder.result.completion_tokens == 5
    too_long = Recorder(case_messages(case), GenerationParams(temperature=0, max_length=len(case["prompt_ids"])))
    backend.generate([too_long.seq])
    assert too_long.result.finish_reason == "length" and too_long.result.completion_tokens == 0


def test_cancellation_takes_effect_at_next_step(family, backend):
    cases = golden(family)["cases"][:2]
    cancelled = Recorder(case_messages(cases[0]), cancel_after_deltas=1)
    other = Recorder(case_messages(cases[1]))
    backend.generate([cancelled.seq, other.seq])
    assert cancelled.result.finish_reason == "cancelled"
    assert cancelled.result.completion_tokens < 32
    _check_against_golden(family, cases[1], other)  # its batch neighbour is unaffected


def test_stop_string(family, backend):
    case = golden(family)["cases"][1]
    full = expected_response(case)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    recorder = Recorder(case_messages(case), GenerationParams(temperature=0, max_new_tokens=32, stop=(stop,)))
    backend.generate([recorder.seq])
    assert recorder.result.finish_reason == "stop"
    assert recorder.result.text == full[: full.index(stop)]


def test_sampling_is_reproducible_with_a_seed(family, backend):
    case = golden(family)["cases"][0]
    params = GenerationParams(max_new_tokens=16, seed=1234)  # family default temperature / top_p
    first, second = Recorder(case_messages(case), params), Recorder(case_messages(case), params)
    backend.generate([first.seq])
    backend.generate([second.seq])
    assert first.result.text == second.result.text


def test_auto_backend_picks_chatglm(family):
    assert resolve_backend_name(EngineConfig(model=str(checkpoint(family)))) == "chatglm"


async def test_through_the_engine(engine_env):
    engine = engine_env(CHATGLM_MODEL=str(checkpoint("v2")), CHATGLM_BACKEND="chatglm")
    case = golden("v2")["cases"][0]
    events = [event async for event in engine.stream(case_messages(case), GREEDY)]
    assert events[-1].text == expected_response(case)
    assert engine.info.model_id == "chatglm2-6b-tiny"


def test_steady_traffic_does_not_grow_the_cache(family, backend):
    """A batch that never empties (a newcomer every few steps) keeps its cache as long as its
    longest live row, not as long as the whole stream of traffic."""
    cases = golden(family)["cases"]
    params = GenerationParams(temperature=0, max_new_tokens=6)
    recorders = [Recorder(case_messages(cases[i % len(cases)]), params) for i in range(16)]
    waiting = [r.seq for r in recorders[1:]]
    lengths, calls = [], []
    decode = backend.model.decode

    def recording_decode(batch, tokens):
        lengths.append(batch.cache.length)
        return decode(batch, tokens)

    def admit(limit):
        calls.append(limit)
        return [waiting.pop(0)] if waiting and len(calls) % 3 == 0 else []

    backend.model.decode = recording_decode
    try:
        backend.run([recorders[0].seq], admit)
    finally:
        backend.model.decode = decode
    assert not waiting and len(lengths) > 40
    longest_prompt = max(len(case["prompt_ids"]) for case in cases)
    assert max(lengths) <= longest_prompt + 6 + 1
    assert all(r.result.text for r in recorders)
