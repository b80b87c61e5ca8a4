"""Daphne's HTTP side, bounded: request bodies and slow requests refused at the socket.

Twisted receives a whole request body (spooled to a temporary file past 100 kB) before Daphne
calls the application, and Daphne then queues all of it, in 8 kB messages, for the application
at once: an ASGI middleware sees the body only when it is already in memory. So `serve`
gives Daphne this request class, which

- answers 413 as soon as the headers declare a body over settings.MAX_BODY_BYTES, and as
  soon as a chunked body passes it, then closes the connection without reading the rest;
- answers 408 to a request whose headers and body have not all arrived within
  CHATGLM_BODY_TIMEOUT seconds (a client that trickles a byte at a time would otherwise hold
  a connection for ever: Twisted's idle timeout restarts with every byte).
"""

from __future__ import annotations

import io
import json

from daphne import http_protocol, server
from django.conf import settings
from twisted.internet import reactor


def _response(status: bytes, message: str, code: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


class BoundedRequest(http_protocol.WebRequest):
    refused = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.body_received = 0
        self.deadline = reactor.callLater(settings.CHATGLM["BODY_TIMEOUT"], self._too_slow)

    def _refuse(self, response: bytes) -> None:
        if self.refused:
            return
        self.refused = True
        self._cancel_deadline()
        self.content = io.BytesIO()  # what Twisted's cleanup expects; nothing more is kept
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(response)
            transport.loseConnection()

    def _too_slow(self) -> None:
        self.deadline = None
        self._refuse(_response(b"408 Request Timeout",
                               f"The request did not arrive within {settings.CHATGLM['BODY_TIMEOUT']:g} s.",
                               "request_timeout"))

    def _too_large(self) -> None:
        self._refuse(_response(b"413 Payload Too Large",
                               f"The request body is larger than {settings.MAX_BODY_BYTES} bytes.", "too_large"))

    def _cancel_deadline(self) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None

    def gotLength(self, length):
        if length is not None and length > settings.MAX_BODY_BYTES:
            return self._too_large()
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.refused:
            return
        self.body_received += len(data)
        if self.body_received > settings.MAX_BODY_BYTES:
            return self._too_large()
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if self.refused:
            return
        self._cancel_deadline()  # all of it is here: from now on the answer takes its time
        super().requestReceived(command, path, version)

    def connectionLost(self, reason):
        self._cancel_deadline()
        super().connectionLost(reason)


class BoundedHTTPFactory(http_protocol.HTTPFactory):
    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = BoundedRequest
        return protocol


def install() -> None:
    """Make Daphne's Server build its HTTP side from BoundedHTTPFactory (it names the class
    inside Server.run, with no argument to pass another)."""
    server.HTTPFactory = BoundedHTTPFactory
