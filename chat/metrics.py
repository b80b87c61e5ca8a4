"""Prometheus metrics (GET /metrics) and the structured access log.

Everything is counted in two places only, so that no protocol adapter needs to know about it:

* `AccessLog`, an ASGI wrapper around the whole application, sees every HTTP response and
  WebSocket handshake: it counts them by protocol and status, writes one JSON access-log line
  each, and sets the request id (the proxy's `X-Request-ID` when it is sane, else a new one)
  in a context variable. Tasks started while handling the request (a turn's runner among
  them) inherit it, and `RequestIdFilter` stamps it on every log record, so one id follows a
  turn from the access line through its start and end lines.
* `TurnWatch`, fed by `chat.turns` with each turn's events: time to first token, gaps between
  deltas, tokens generated, how turns end (cancellations, errors, upstream errors).

With `serve --workers N` every worker is a process of its own: the supervisor sets
PROMETHEUS_MULTIPROC_DIR, prometheus-client then keeps counters and histograms in files there,
and whichever worker answers /metrics sums all of them (a scrape through the proxy sees the
whole site, not one worker by chance). Gauges are summed over live workers (`livesum`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import time
import uuid

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

access_log = logging.getLogger("chat.access")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("chatglm_request_id", default="-")
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a proxy's id is logged, so nothing odd

_multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

REQUESTS = Counter("chatglm_requests", "HTTP responses and WebSocket handshakes",
                   ["protocol", "status"])
ERRORS = Counter("chatglm_errors", "Failed requests and turns: HTTP status >= 400, or a turn that ended in error",
                 ["protocol", "code"])
TURNS = Counter("chatglm_turns", "Chat turns that ended, by how", ["source", "finish_reason"])
CANCELLATIONS = Counter("chatglm_cancellations", "Turns stopped before the model finished", ["source"])
UPSTREAM_ERRORS = Counter("chatglm_upstream_errors", "Turns the upstream inference engine failed", ["code"])
TOKENS = Counter("chatglm_generated_tokens", "Tokens generated (completion tokens)", ["source"])
TTFT = Histogram("chatglm_time_to_first_token_seconds", "From admission to the first text",
                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))
ITL = Histogram("chatglm_inter_token_latency_seconds", "Between consecutive text deltas of one answer",
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
QUEUE = Gauge("chatglm_queue_length", "Requests waiting for the engine", multiprocess_mode="livesum")
RUNNING = Gauge("chatglm_running_sequences", "Sequences the engine is generating", multiprocess_mode="livesum")


def protocol_of(scope: dict) -> str:
    if scope["type"] == "websocket":
        return "websocket"
    path = scope.get("path", "")
    if path in ("/chat", "/stream", "/clear"):
        return "seed"
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/api/"):
        return "conversations"
    if path in ("/healthz", "/metrics"):
        return "ops"
    return "page"


def _engine_gauges() -> None:
    """Queue and running counts of this process's engine (never creates or loads one)."""
    from .engine import _engine  # the module global: None until something asked for the engine

    if _engine is not None and _engine.ready:
        QUEUE.set(_engine.queue_length())
        RUNNING.set(_engine.running_count())


def exposition() -> tuple[bytes, str]:
    """The text /metrics answers, and its content type."""
    _engine_gauges()
    if _multiprocess:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# -- turns ------------------------------------------------------------------------------------


class TurnWatch:
    """One turn's metrics, fed by chat.turns with each event and the result."""

    def __init__(self, source: str):
        self.source = source
        self.last_delta: float | None = None
        RUNNING.inc() if _multiprocess else _engine_gauges()

    def delta(self) -> None:
        now = time.monotonic()
        if self.last_delta is not None:
            ITL.observe(now - self.last_delta)
        self.last_delta = now

    def done(self, result, turn_id: str) -> None:
        if _multiprocess:
            RUNNING.dec()
        else:
            _engine_gauges()
        reason = result.finish_reason
        TURNS.labels(self.source, reason).inc()
        TOKENS.labels(self.source).inc(result.completion_tokens)
        if result.time_to_first_token is not None:
            TTFT.observe(result.time_to_first_token)
        if reason == "cancelled":
            CANCELLATIONS.labels(self.source).inc()
        if reason == "error":
            code = result.error if result.error and len(result.error) <= 40 and " " not in result.error else "generation_failed"
            ERRORS.labels(self.source, code).inc()
            if code.startswith("upstream_"):
                UPSTREAM_ERRORS.labels(code).inc()
        logging.getLogger("chat.turns").info(
            "turn %s ended: %s, %d prompt + %d completion tokens, first token %s s, %.3f s",
            turn_id, reason, result.prompt_tokens, result.completion_tokens,
            "-" if result.time_to_first_token is None else f"{result.time_to_first_token:.3f}", result.duration,
        )


# -- the ASGI wrapper -------------------------------------------------------------------------


class AccessLog:
    """Counts and logs every HTTP response and WebSocket session; sets the request id."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SANE_REQUEST_ID.match(given) else uuid.uuid4().hex
        request_id_var.set(request_id)  # this task's context: the app and its tasks inherit it
        started = time.monotonic()
        state = {"status": None, "bytes": 0, "turn_id": None}
        protocol = protocol_of(scope)

        async def sending(message):
            kind = message["type"]
            if kind == "http.response.start":
                state["status"] = message["status"]
                headers = message.get("headers", [])
                # An error names its turn's id in its message and its own X-Request-ID: one
                # header, the id the client can quote; the access line records both.
                named = [value for name, value in headers if name.lower() == b"x-request-id"]
                if named:
                    state["turn_id"] = named[0].decode("latin-1")
                else:
                    message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            elif kind == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            elif kind == "websocket.accept":
                state["status"] = 101
            elif kind == "websocket.close" and state["status"] is None:
                state["status"] = 403  # refused at the handshake
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            status = state["status"] or (499 if scope["type"] == "http" else 403)
            REQUESTS.labels(protocol, str(status)).inc()
            if status >= 400:
                ERRORS.labels(protocol, str(status)).inc()
            client = scope.get("client") or ("-", 0)
            access_log.info(json.dumps({
                "request_id": request_id, "protocol": protocol,
                "method": scope.get("method", "WS"), "path": scope.get("path", ""), "status": status,
                "bytes": state["bytes"], "duration_ms": round((time.monotonic() - started) * 1000, 1),
                "client": client[0], "worker": os.getpid(),
                **({"turn_id": state["turn_id"]} if state["turn_id"] else {}),
            }))


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (`%(request_id)s` in the log format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True
