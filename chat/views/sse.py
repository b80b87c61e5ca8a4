"""Server-Sent Events: the one streaming skeleton of /stream and the OpenAI views, each of
which only says how to encode a turn (an `Encoder`).

The body of a StreamingHttpResponse must be an async generator (a sync one is buffered
whole under ASGI, docs/pitfalls.md#sse-async) and must never raise once it has started: under Daphne an
exception there hangs the client and kills Daphne's application checker (docs/pitfalls.md#sse-never-raise). So
the stream body catches everything, reports it as an event and ends normally.
"""

from __future__ import annotations

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


class Encoder:
    """How one protocol writes a turn as SSE: each method returns the encoded events to send."""

    where = "stream"  # names the stream in the log line of an unexpected error

    def opening(self) -> list[str]:
        return []

    def delta(self, text: str) -> list[str]:
        raise NotImplementedError

    def done(self, done: TurnDone) -> list[str]:
        raise NotImplementedError

    def failed(self, error: ChatError) -> str:
        raise NotImplementedError


def turn_response(turn, encoder: Encoder) -> StreamingHttpResponse:
    """The turn as a streaming SSE response, encoded by `encoder`; closing it cancels the turn."""
    resp = _TurnStream(_body(turn, encoder), turn)
    resp["Cache-Control"] = "no-cache"
    resp["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return resp


async def _body(turn, encoder: Encoder) -> AsyncIterator[str]:
    """The one stream body: never raises (docs/pitfalls.md#sse-never-raise), and a client that
    disconnects stops its generation at the next decode step. Waiting and silence come out as
    comment lines (`: queued position=N`, `: ping`); deltas that piled up while this client was
    behind come as one (see `Turn.events`)."""
    try:
        for chunk in encoder.opening():
            yield chunk
        async for event in turn.events(idle=settings.CHATGLM["PING_SECONDS"]):
            if event is IDLE:
                yield comment("ping")
            elif isinstance(event, QueuePosition):
                yield comment(f"queued position={event.position}")
            elif isinstance(event, TextDelta):
                for chunk in encoder.delta(event.text):
                    yield chunk
            elif isinstance(event, TurnDone):
                for chunk in encoder.done(event):
                    yield chunk
    except Exception as exc:  # noqa: BLE001 - never let a stream body raise (docs/pitfalls.md#sse-never-raise)
        yield encoder.failed(unexpected_error(exc, encoder.where))
    finally:
        turn.cancel()
