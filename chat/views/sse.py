"""Server-Sent Events plumbing shared by /stream and /v1/chat/completions.

The body of a StreamingHttpResponse must be an async generator (a sync one is buffered
whole under ASGI, PITFALLS #1) and must never raise once it has started: under Daphne an
exception there hangs the client and kills Daphne's application checker (PITFALLS #3). So
every stream body catches everything, reports it as an event and ends normally.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from django.http import StreamingHttpResponse

from ..engine import QueuePosition
from ..turns import IDLE


def event(name: str | None, data) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {payload}\n\n"


def comment(text: str) -> str:
    """An SSE comment line: clients ignore it, proxies see traffic and keep the stream open."""
    return f": {text}\n\n"


class _TurnStream(StreamingHttpResponse):
    """A stream tied to a turn: closing the response cancels the turn.

    Django's ASGI handler closes every response when the request ends, also when the client
    disconnected before the body started, in which case the body's own `finally` never runs
    and the answer would be generated for nobody. After a complete answer the turn is done
    and cancelling it does nothing. (`close()` may run on a worker thread: cancelling is
    thread-safe.)"""

    def __init__(self, body, turn):
        super().__init__(body, content_type="text/event-stream; charset=utf-8")
        self.turn = turn

    def close(self):
        self.turn.cancel()
        super().close()


def response(body: AsyncIterator[str], turn=None) -> StreamingHttpResponse:
    """A streaming SSE response; with `turn`, one that cancels the turn when it is closed."""
    if turn is not None:
        resp = _TurnStream(body, turn)
    else:
        resp = StreamingHttpResponse(body, content_type="text/event-stream; charset=utf-8")
    resp["Cache-Control"] = "no-cache"
    resp["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return resp


async def turn_events(turn, ping_seconds: float) -> AsyncIterator:
    """A turn's events for an SSE body: waiting and silence come out already encoded as
    comment lines (str: `: queued position=N`, `: ping`), the rest as turn events. Deltas
    that piled up while this client was behind come as one (see `Turn.events`)."""
    async for event in turn.events(idle=ping_seconds):
        if event is IDLE:
            yield comment("ping")
        elif isinstance(event, QueuePosition):
            yield comment(f"queued position={event.position}")
        else:
            yield event
