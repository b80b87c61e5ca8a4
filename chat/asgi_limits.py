"""Limits applied at the ASGI level, before Django or Channels see a connection.

- HTTP request bodies: a declared `Content-Length` over `settings.MAX_BODY_BYTES`
  (CHATGLM_MAX_BODY_BYTES) is answered 413 without reading the body, and a body streamed
  without a length is counted as it arrives and refused once it passes the limit. Django's
  own limit applies only after it has buffered the whole body. (Daphne buffers a body before
  the application sees it, so `serve` also refuses at the socket: chat.daphne_limits.)
- WebSocket sockets per client: at most CHATGLM_MAX_SOCKETS_PER_SESSION open sockets per
  session cookie and CHATGLM_MAX_SOCKETS_PER_IP per (non-exempt) address; past that the
  handshake is refused (HTTP 403).
- The client's address is bound for the connection (chat.throttle reads it): the socket's
  peer, or behind the HTTPS proxy (CHATGLM_HTTPS=1) the last X-Forwarded-For entry, the one
  the proxy appended, as chat.client_ip does for login throttling (earlier entries are the
  client's own to write).
"""

from __future__ import annotations

import collections
import json
from http.cookies import SimpleCookie

from django.conf import settings

from . import throttle


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def _too_large_body() -> bytes:
    return json.dumps({"error": {
        "message": f"The request body is larger than {settings.MAX_BODY_BYTES} bytes.",
        "type": "invalid_request_error", "param": None, "code": "too_large",
    }}).encode()


def _client_address(scope) -> str | None:
    client = scope.get("client")
    address = client[0] if client else None
    if getattr(settings, "HTTPS", False):
        forwarded = _header(scope, b"x-forwarded-for")
        if forwarded:
            address = forwarded.decode("latin-1").rsplit(",", 1)[-1].strip() or address
    return address


async def _send_413(send) -> None:
    body = _too_large_body()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})


class ResourceLimits:
    """Wraps the whole ASGI application (see the module docstring)."""

    def __init__(self, application):
        self.application = application
        self.sockets: collections.Counter = collections.Counter()

    async def __call__(self, scope, receive, send):
        token = throttle.bind_client_ip(_client_address(scope))
        try:
            if scope["type"] == "http":
                return await self._http(scope, receive, send)
            if scope["type"] == "websocket":
                return await self._websocket(scope, receive, send)
            return await self.application(scope, receive, send)
        finally:
            throttle._client_ip.reset(token)

    async def _http(self, scope, receive, send):
        limit = settings.MAX_BODY_BYTES
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = False  # Daphne and Django reject a malformed length themselves
            if too_large:
                return await _send_413(send)

        received = 0
        refused = False

        async def counted_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await _send_413(send)
                    return {"type": "http.disconnect"}  # the application stops reading and answers nothing
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        return await self.application(scope, counted_receive, guarded_send)

    def _socket_keys(self, scope) -> list[tuple[str, int]]:
        keys = []
        cookie = _header(scope, b"cookie")
        if cookie:
            try:
                morsel = SimpleCookie(cookie.decode("latin-1")).get(settings.SESSION_COOKIE_NAME)
            except Exception:  # noqa: BLE001 - a malformed cookie header names no session
                morsel = None
            if morsel is not None and morsel.value:
                keys.append((f"session:{morsel.value}", settings.CHATGLM["MAX_SOCKETS_PER_SESSION"]))
        ip = throttle.client_ip()
        if ip:
            keys.append((f"ip:{ip}", settings.CHATGLM["MAX_SOCKETS_PER_IP"]))
        return [(key, limit) for key, limit in keys if limit > 0]

    async def _websocket(self, scope, receive, send):
        keys = self._socket_keys(scope)
        if any(self.sockets[key] >= limit for key, limit in keys):
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})  # before accept: an HTTP 403
            return
        for key, _ in keys:
            self.sockets[key] += 1
        try:
            return await self.application(scope, receive, send)
        finally:
            for key, _ in keys:
                self.sockets[key] -= 1
                if self.sockets[key] <= 0:
                    del self.sockets[key]
