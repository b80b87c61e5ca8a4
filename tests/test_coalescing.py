"""A reader that falls behind gets the deltas that piled up as one event, once, in the turn's
fan-out (so SSE, WebSocket and the OpenAI stream all benefit); the engine hands a decode
step's events to the event loop in one batch; keep-alive pings need no timer per event."""

from __future__ import annotations

import asyncio
import json

import pytest

from chat.engine import GenerationParams, QueuePosition, Started, TextDelta
from chat.engine.vocabulary import GenerationResult
from chat.owners import Owner
from chat.turns import IDLE, Protocol, Turn, TurnDone, TurnInput
from tests.views.sse_client import parse

API = Owner(api_key="tests")


def bare_turn() -> Turn:
    """A turn with no engine behind it: the test publishes its events itself."""
    return Turn(TurnInput(owner=API, protocol=Protocol.SEED, query="q", store=False), [], 0, request=None, claim=None)


async def next_event(events):
    return await asyncio.wait_for(events.__anext__(), 5)


async def test_events_published_while_the_reader_was_away_come_coalesced():
    turn = bare_turn()
    for event in [QueuePosition(3), QueuePosition(2), QueuePosition(1), Started(5),
                  TextDelta("你"), TextDelta("好"), TextDelta("🙂"), TextDelta(" ok")]:
        turn._publish(event)
    events = turn.events()
    assert [await next_event(events) for _ in range(3)] == [QueuePosition(1), Started(5), TextDelta("你好🙂 ok")]
    waiting = asyncio.ensure_future(next_event(events))  # caught up: now it waits
    await asyncio.sleep(0)
    turn._publish(TextDelta("!"))
    assert await waiting == TextDelta("!")  # a reader that keeps up gets each delta as it comes
    done = TurnDone(GenerationResult(text="你好🙂 ok!", finish_reason="stop"), None, None)
    turn._publish(TextDelta("a"))
    turn._publish(TextDelta("b"))
    turn._publish(done)
    assert [e async for e in events] == [TextDelta("ab"), done]
    assert turn.text == "你好🙂 ok!ab"
    # A late reader replays everything, coalesced the same way.
    assert [e async for e in turn.events()] == [QueuePosition(1), Started(5), TextDelta("你好🙂 ok!ab"), done]


async def test_idle_reader_gets_pings_and_a_busy_one_none():
    turn = bare_turn()
    events = turn.events(idle=0.05)
    assert await next_event(events) is IDLE
    assert await next_event(events) is IDLE  # and again after each further silence
    turn._publish(TextDelta("x"))
    assert await next_event(events) == TextDelta("x")

    busy = bare_turn()
    reader = busy.events(idle=1.0)
    received = []

    async def feed():
        for i in range(20):
            busy._publish(TextDelta(str(i % 10)))
            await asyncio.sleep(0.01)
        busy._publish(TurnDone(GenerationResult(text="", finish_reason="stop"), None, None))

    feeder = asyncio.ensure_future(feed())
    async for event in reader:
        received.append(event)
    await feeder
    assert IDLE not in received and "".join(e.text for e in received if isinstance(e, TextDelta)) == "0123456789" * 2


@pytest.mark.django_db(transaction=True)
async def test_slow_sse_client_gets_the_backlog_in_one_event(engine_env, async_client):
    """Through /stream: the client reads one event, stops reading until the answer is done,
    then gets everything else as one delta; `response` is right in every event."""
    engine = engine_env(CHATGLM_FAKE_DELAY_MS="2")
    query = "coalesce 你好🙂 " * 6
    r = await async_client.post("/stream", json.dumps({"query": query}), content_type="application/json")
    chunks = r.streaming_content.__aiter__()
    first = ""
    while '"delta"' not in first:
        first = (await chunks.__anext__()).decode()
    for _ in range(500):  # the answer finishes while this client is not reading
        if engine.running_count() == 0 and engine.queue_length() == 0:
            break
        await asyncio.sleep(0.01)
    rest = "".join([c.decode() async for c in chunks])
    deltas = [data for name, data in parse(first + rest) if name == "delta"]
    expected = f"You said: {query}"
    assert len(deltas) == 3 and deltas[-1]["finished"] is True  # first delta, the backlog, the end
    assert deltas[0]["delta"] + deltas[1]["delta"] == expected == deltas[-1]["response"]
    assert deltas[0]["response"] == deltas[0]["delta"] and deltas[1]["response"] == expected
    assert "\ufffd" not in deltas[1]["delta"]


async def collect(request):
    return [event async for event in request.events()]


async def test_a_step_of_many_rows_wakes_the_loop_once_not_per_event(engine_env, monkeypatch):
    engine = engine_env(CHATGLM_FAKE_DELAY_MS="20", CHATGLM_MAX_BATCH="64", CHATGLM_MAX_QUEUE="64")
    loop = asyncio.get_running_loop()
    calls = 0
    original = loop.call_soon_threadsafe

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    requests = [engine.submit([{"role": "user", "content": f"row {i:02d} " * 4}], GenerationParams(max_new_tokens=10))
                for i in range(64)]
    results = await asyncio.gather(*(collect(r) for r in requests))
    events = sum(len(r) for r in results)
    assert all(r[-1].finish_reason == "length" for r in results)
    assert events >= 64 * 12  # Started, ten deltas and the result per row
    assert calls <= events / 8  # about one per decode step, not one per event
