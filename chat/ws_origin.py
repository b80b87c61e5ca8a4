"""Origin checking for WebSocket handshakes that lets programs with an API key in.

Browsers always send `Origin`, and checking it against ALLOWED_HOSTS is what stops another
site from opening a socket with the user's session cookie. Programs send no Origin at all,
and `AllowedHostsOriginValidator` refuses them (PITFALLS #11). A handshake without Origin
that presents an API key (`?api_key=` or `Authorization`) is therefore passed on to the
consumer, which checks the key; any handshake that carries an Origin is checked as before.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.security.websocket import AllowedHostsOriginValidator


class OriginValidatorUnlessApiKey:
    def __init__(self, application):
        self.application = application
        self.validated = AllowedHostsOriginValidator(application)

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", []))
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        is_program = b"origin" not in headers and (b"authorization" in headers or "api_key" in query)
        app = self.application if is_program else self.validated
        return await app(scope, receive, send)
