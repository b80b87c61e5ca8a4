"""The engine: one thread, a bounded queue, cancellation at the next decode step, batching."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from chat.engine.backend import Backend
from chat.engine.backends.fake import FakeBackend
from chat.engine.detokenize import IncrementalDetokenizer
from chat.engine.scheduler import Engine
from chat.engine.vocabulary import (
    EngineOverloaded,
    EngineUnavailable,
    GenerationParams,
    GenerationResult,
    ModelInfo,
    QueuePosition,
    Started,
    TextDelta,
)

USER = [{"role": "user", "content": "hello there, this is a fairly long message to echo back"}]


class SteppingBackend(Backend):
    """Emits one 'x' per step forever (until cancelled or out of budget), recording steps."""

    def __init__(self, delay=0.01, max_batch_size=1, fail=False):
        self.delay = delay
        self.max_batch_size = max_batch_size
        self.fail = fail
        self.steps_after_cancel = []
        self.batches = []
        self.threads = set()

    def load(self):
        self.threads.add(threading.get_ident())

    @property
    def info(self):
        return ModelInfo("stepping", "test", "cpu", 1024)

    def count_prompt_tokens(self, messages):
        return 1

    def run(self, sequences, admit):
        self.threads.add(threading.get_ident())
        self.batches.append(len(sequences))
        for seq in sequences:
            seq.begin(1, IncrementalDetokenizer(lambda ids: "x" * len(ids)), seq.params.max_new_tokens or 10_000)
        steps = 0
        while not all(s.finished for s in sequences):
            time.sleep(self.delay)
            steps += 1
            if self.fail and steps == 3:
                raise RuntimeError("boom")
            for seq in sequences:
                if not seq.finished:
                    cancelled_before = seq.cancelled
                    seq.push_token(0)
                    if cancelled_before:
                        self.steps_after_cancel.append(steps)


def make_engine(backend, max_queue=8):
    engine = Engine(lambda: backend, max_queue=max_queue)
    engine.wait_ready(10)
    assert engine.state == "ready"
    return engine


async def collect(request):
    return [event async for event in request.events()]


async def test_stream_yields_started_deltas_then_result():
    engine = make_engine(FakeBackend())
    events = [e async for e in engine.stream(USER, GenerationParams())]
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], GenerationResult)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == events[-1].text == "You said: " + USER[0]["content"]
    assert events[-1].finish_reason == "stop"
    assert events[-1].completion_tokens > 0 and events[-1].prompt_tokens > 0
    engine.stop()


async def test_consumer_that_stops_iterating_cancels_at_next_step():
    backend = SteppingBackend(delay=0.01)
    engine = make_engine(backend)
    request = engine.submit(USER, GenerationParams())
    async with contextlib.aclosing(request.events()) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                break  # the client went away
    for _ in range(100):
        if request.sequence.finished:
            break
        await asyncio.sleep(0.02)
    assert backend.steps_after_cancel and len(backend.steps_after_cancel) == 1  # exactly one more step
    assert request.sequence.result.finish_reason == "cancelled"
    assert request.sequence.result.text  # what was produced is kept
    engine.stop()


async def test_full_queue_rejects_at_once():
    engine = make_engine(SteppingBackend(delay=0.05), max_queue=2)
    running = engine.submit(USER, GenerationParams(max_new_tokens=50))
    await asyncio.sleep(0.1)  # it leaves the queue and runs
    waiting = [engine.submit(USER, GenerationParams(max_new_tokens=1)) for _ in range(2)]
    with pytest.raises(EngineOverloaded):
        engine.submit(USER, GenerationParams())
    for request in [running, *waiting]:
        request.cancel()
    engine.stop()


async def test_queue_positions_are_announced_and_updated():
    engine = make_engine(SteppingBackend(delay=0.01))
    first = engine.submit(USER, GenerationParams(max_new_tokens=20))
    await asyncio.sleep(0.05)
    second = engine.submit(USER, GenerationParams(max_new_tokens=5))
    third = engine.submit(USER, GenerationParams(max_new_tokens=5))
    events = await collect(third)
    positions = [e.position for e in events if isinstance(e, QueuePosition)]
    assert positions[0] == 2 and positions[-1] == 1
    await collect(first), await collect(second)
    engine.stop()


async def test_cancelling_a_queued_request_frees_its_place():
    engine = make_engine(SteppingBackend(delay=0.01))
    running = engine.submit(USER, GenerationParams(max_new_tokens=30))
    await asyncio.sleep(0.05)
    queued = engine.submit(USER, GenerationParams())
    later = engine.submit(USER, GenerationParams(max_new_tokens=2))
    queued.cancel()
    result = (await collect(queued))[-1]
    assert result.finish_reason == "cancelled" and result.completion_tokens == 0
    positions = [e.position for e in await collect(later) if isinstance(e, QueuePosition)]
    assert positions[-1] == 1
    await collect(running)
    engine.stop()


async def test_backend_failure_is_an_error_result_and_the_engine_goes_on():
    backend = SteppingBackend(delay=0.001, fail=True)
    engine = make_engine(backend)
    events = await collect(engine.submit(USER, GenerationParams()))
    assert events[-1].finish_reason == "error" and "RuntimeError" in events[-1].error
    assert "boom" not in events[-1].error  # exception text stays in the log
    assert events[-1].text == "xx"  # the partial answer survives
    backend.fail = False
    events = await collect(engine.submit(USER, GenerationParams(max_new_tokens=3)))
    assert events[-1].finish_reason == "length" and events[-1].text == "xxx"
    engine.stop()


async def test_requests_are_batched_up_to_the_backend_size():
    backend = SteppingBackend(delay=0.01, max_batch_size=4)
    engine = make_engine(backend)
    blocker = engine.submit(USER, GenerationParams(max_new_tokens=10))
    await asyncio.sleep(0.03)
    requests = [engine.submit(USER, GenerationParams(max_new_tokens=5)) for _ in range(6)]
    results = await asyncio.gather(*(collect(r) for r in [blocker, *requests]))
    assert all(r[-1].text == "xxxxx" for r in results[1:])
    assert backend.batches[1:] == [4, 2]
    assert len(backend.threads) == 1  # load and every generation on the one engine thread
    engine.stop()


async def test_concurrent_streams_do_not_mix():
    engine = make_engine(FakeBackend(delay=0.001), max_queue=16)
    prompts = [f"message number {i} 你好🙂" for i in range(12)]

    async def run(prompt):
        events = [e async for e in engine.stream([{"role": "user", "content": prompt}], GenerationParams())]
        return "".join(e.text for e in events if isinstance(e, TextDelta))

    assert await asyncio.gather(*map(run, prompts)) == [f"You said: {p}" for p in prompts]
    engine.stop()


async def test_load_failure_is_reported():
    class Broken(SteppingBackend):
        def load(self):
            raise OSError("no weights here")

    engine = Engine(lambda: Broken(), max_queue=2)
    with pytest.raises(EngineUnavailable, match="no weights here"):
        engine.wait_ready(5)
    assert engine.state == "failed" and not engine.ready
    with pytest.raises(EngineUnavailable):
        engine.submit(USER, GenerationParams())


async def test_a_continuous_backend_takes_new_requests_into_the_running_batch():
    engine = make_engine(FakeBackend(delay=0.005, max_batch_size=4))
    long = engine.submit([{"role": "user", "content": "a long answer " * 20}], GenerationParams())
    await asyncio.sleep(0.05)
    short = engine.submit([{"role": "user", "content": "hi"}], GenerationParams())
    events = await collect(short)
    assert events[-1].text == "You said: hi"
    assert not long.sequence.finished  # the short one did not wait for the running batch to end
    assert (await collect(long))[-1].finish_reason == "stop"
    engine.stop()


async def test_a_sequence_the_backend_leaves_unfinished_is_an_error_not_a_complete_answer():
    class Forgetful(SteppingBackend):
        def run(self, sequences, admit):
            for seq in sequences:
                seq.begin(1, IncrementalDetokenizer(lambda ids: "x" * len(ids)), 100)
                seq.push_token(0)

    engine = make_engine(Forgetful())
    result = (await collect(engine.submit(USER, GenerationParams())))[-1]
    assert result.finish_reason == "error" and result.text == "x"
    engine.stop()
