"""The engine's queue is shared fairly: a cap on each owner's waiting requests, and owners
take turns in the waiting line."""

from __future__ import annotations

import asyncio

import pytest

from chat.engine.scheduler import Engine
from chat.engine.vocabulary import (
    EngineOverloaded,
    GenerationParams,
    GenerationResult,
    TextDelta,
)
from tests.engine.test_scheduler import USER, SteppingBackend


async def until(condition, seconds=10.0):
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def make_engine(max_queue=16, share=3):
    engine = Engine(lambda: SteppingBackend(delay=0.01), max_queue=max_queue, max_waiting_per_owner=share)
    engine.wait_ready(10)
    return engine


async def test_an_owner_past_its_share_is_refused_while_others_get_in():
    engine = make_engine(share=3)
    running = engine.submit(USER, GenerationParams(max_new_tokens=100_000), owner="key:a")
    await until(lambda: engine.running_count() == 1)  # it runs: the queue is empty again
    waiting = [engine.submit(USER, GenerationParams(max_new_tokens=1), owner="key:a") for _ in range(3)]
    with pytest.raises(EngineOverloaded, match="3 requests waiting") as refused:
        engine.submit(USER, GenerationParams(), owner="key:a")
    assert refused.value.retry_after >= 1
    other = engine.submit(USER, GenerationParams(max_new_tokens=1), owner="user:7")  # not a's share
    nobody = [engine.submit(USER, GenerationParams(max_new_tokens=1)) for _ in range(5)]  # no owner: no share
    assert engine.queue_length() == 9
    for request in [running, *waiting, other, *nobody]:
        request.cancel()
    engine.stop()


async def test_owners_take_turns_in_the_waiting_line():
    engine = make_engine(share=8)
    running = engine.submit(USER, GenerationParams(max_new_tokens=100_000), owner="a")
    await until(lambda: engine.running_count() == 1)  # it holds the engine until cancelled
    order: list[str] = []

    async def run(owner: str, tag: str):
        request = engine.submit(USER, GenerationParams(max_new_tokens=1), owner=owner)
        async for event in request.events():
            if isinstance(event, TextDelta) and tag not in order:
                order.append(tag)
            if isinstance(event, GenerationResult):
                return event

    # a floods first, then b and c ask once each: they are served after a's first, not its last.
    tasks = [asyncio.create_task(run("a", f"a{i}")) for i in range(5)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(run("b", "b0")), asyncio.create_task(run("c", "c0"))]
    await until(lambda: engine.queue_length() == 7)
    running.cancel()
    await asyncio.gather(*tasks)
    assert order == ["a0", "b0", "c0", "a1", "a2", "a3", "a4"]
    engine.stop()


async def test_queue_positions_follow_the_fair_order():
    engine = make_engine(share=8)
    running = engine.submit(USER, GenerationParams(max_new_tokens=100_000), owner="a")
    await until(lambda: engine.running_count() == 1)
    flood = [engine.submit(USER, GenerationParams(max_new_tokens=1), owner="a") for _ in range(3)]
    late = engine.submit(USER, GenerationParams(max_new_tokens=1), owner="b")
    await asyncio.sleep(0.05)
    first = await late._events.get()
    assert first.position == 2  # behind a's first waiting request, ahead of its other two
    for request in [running, *flood, late]:
        request.cancel()
    engine.stop()
