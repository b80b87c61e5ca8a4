"""Server-Sent Events: the one streaming skeleton of /stream and the OpenAI views, each of
which only says how to encode its turns (an `Encoder`).

The body of a StreamingHttpResponse must be an async generator (a sync one is buffered
whole under ASGI, docs/pitfalls.md#sse-async) and must never raise once it has started: under Daphne an
exception there hangs the client and kills Daphne's application checker (docs/pitfalls.md#sse-never-raise). So
the stream body catches everything, reports it as an event and ends normally.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from django.conf import settings
from django.http import StreamingHttpResponse

from ..errors import ChatError, unexpected_error
from ..turns import IDLE, QueuePosition, TextDelta, TurnDone


def event(name: str | None, data) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {payload}\n\n"


def comment(text: str) -> str:
    """An SSE comment line: clients ignore it, proxies see traffic and keep the stream open."""
    return f": {text}\n\n"


class _TurnStream(StreamingHttpResponse):
    """A stream tied to its turns: closing the response cancels them.

    Django's ASGI handler closes every response when the request ends, also when the client
    disconnected before the body started, in which case the body's own `finally` never runs
    and the answer would be generated for nobody. After a complete answer the turns are done
    and cancelling them does nothing. (`close()` may run on a worker thread: cancelling is
    thread-safe.)"""

    def __init__(self, body, turns):
        super().__init__(body, content_type="text/event-stream; charset=utf-8")
        self.turns = turns

    def close(self):
        for turn in self.turns:
            turn.cancel()
        super().close()


class Encoder:
    """How one protocol writes its turns as SSE: each method returns the encoded events to
    send. `index` is the turn's place among the answer's turns (OpenAI's `n` choices; 0 when
    there is one). Setting `closed` ends the stream early (after a failed choice)."""

    where = "stream"  # names the stream in the log line of an unexpected error
    closed = False

    def opening(self) -> list[str]:
        return []

    def delta(self, index: int, delta: TextDelta) -> list[str]:
        raise NotImplementedError

    def done(self, index: int, done: TurnDone) -> list[str]:
        raise NotImplementedError

    def closing(self) -> list[str]:
        """After every turn has ended."""
        return []

    def failed(self, error: ChatError) -> str:
        raise NotImplementedError


def turn_response(turns, encoder: Encoder) -> StreamingHttpResponse:
    """One turn (or the turns of one answer) as a streaming SSE response, encoded by
    `encoder`; closing it cancels them."""
    turns = list(turns) if isinstance(turns, (list, tuple)) else [turns]
    resp = _TurnStream(_body(turns, encoder), turns)
    resp["Cache-Control"] = "no-cache"
    resp["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return resp


async def _body(turns, encoder: Encoder) -> AsyncIterator[str]:
    """The one stream body: never raises (docs/pitfalls.md#sse-never-raise), and a client that
    disconnects stops its generation at the next decode step. Waiting and silence come out as
    comment lines (`: queued position=N`, `: ping`); deltas that piled up while this client was
    behind come as one (see `Turn.events`)."""
    try:
        for chunk in encoder.opening():
            yield chunk
        async for index, event in _events(turns):
            if event is IDLE:
                yield comment("ping")
            elif isinstance(event, QueuePosition):
                yield comment(f"queued position={event.position}")
            elif isinstance(event, TextDelta):
                for chunk in encoder.delta(index, event):
                    yield chunk
            elif isinstance(event, TurnDone):
                for chunk in encoder.done(index, event):
                    yield chunk
            if encoder.closed:
                return
        for chunk in encoder.closing():
            yield chunk
    except Exception as exc:  # noqa: BLE001 - never let a stream body raise (docs/pitfalls.md#sse-never-raise)
        yield encoder.failed(unexpected_error(exc, encoder.where))
    finally:
        for turn in turns:
            turn.cancel()


async def _events(turns) -> AsyncIterator[tuple[int, object]]:
    """(index, event) of the turns' events as they come, until every turn has ended."""
    ping = settings.CHATGLM["PING_SECONDS"]
    if len(turns) == 1:  # the usual case: no task and queue per stream
        async for event in turns[0].events(idle=ping):
            yield 0, event
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index, turn):
        try:
            async for event in turn.events(idle=ping):
                await queue.put((index, event))
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which reports it
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(index, turn)) for index, turn in enumerate(turns)]
    try:
        ended = 0
        while ended < len(turns):
            index, event = await queue.get()
            if isinstance(event, Exception):
                raise event
            if isinstance(event, TurnDone):
                ended += 1
            yield index, event
    finally:
        for task in tasks:
            task.cancel()
