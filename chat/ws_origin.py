"""The WebSocket handshake's Origin check: the same origin as the site, scheme, host and port.

Browsers send `Origin` with every WebSocket handshake and attach the site's cookies whatever
page opened the socket, so the Origin is all that stops another page from chatting with the
visitor's session (cross-site WebSocket hijacking). Channels' `AllowedHostsOriginValidator`
compares host names only: a page on another port of the same host (`http://localhost:1234`,
any local dev server) passed. Here an Origin is accepted only if it is one of the site's
own origins, compared as (scheme, host, port) with default ports filled in:

- the request's own `Host` (when it passes ALLOWED_HOSTS), with the scheme the client used
  (`https` for `wss`, or when SECURE_PROXY_SSL_HEADER says the proxy received HTTPS);
- each literal ALLOWED_HOSTS entry on the port the server listens on (wildcards such as `*`
  or `.example.com` add nothing: they would admit every port-sharing origin);
- each CSRF_TRUSTED_ORIGINS entry (`https://*.example.com` matches subdomains, as in Django).

Programs send no Origin at all; a handshake without Origin that presents an API key
(`?api_key=` or `Authorization`) goes on to the consumer, which checks the key. Any other
handshake is refused with 403 before the consumer runs.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from .owners import scope_header, socket_credential

DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]  # (scheme, host, port), host lower-case, IPv6 in brackets


def parse_origin(value: str) -> Origin | None:
    """`scheme://host[:port]` as a triple, or None for `null`, paths, other schemes, junk."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.username is not None or parts.password is not None:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return scheme, host, port or DEFAULT_PORTS[scheme]


def handshake_scheme(scope) -> str:
    """`https` when the browser reached us over TLS, directly or through a trusted proxy."""
    if scope.get("scheme") in ("wss", "https"):
        return "https"
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        meta_name, expected = proxy
        header = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode()
        value = scope_header(scope, header)
        if value is not None and value.split(",")[0].strip() == expected:
            return "https"
    return "http"


def site_origins(scope) -> set[Origin]:
    """The exact origins of this site for this handshake (see the module doc)."""
    scheme = handshake_scheme(scope)
    origins: set[Origin] = set()
    host = scope_header(scope, b"host")
    if host:
        domain, port = split_domain_port(host.lower())
        if domain and validate_host(domain, settings.ALLOWED_HOSTS):
            origin = parse_origin(f"{scheme}://{host}")
            if origin is not None:
                origins.add(origin)
    server = scope.get("server")
    if server and server[1]:
        for allowed in settings.ALLOWED_HOSTS:
            if allowed == "*" or allowed.startswith("."):
                continue
            origin = parse_origin(f"{scheme}://{allowed}:{server[1]}")
            if origin is not None:
                origins.add(origin)
    return origins


def trusted_origin(origin: Origin) -> bool:
    """Whether CSRF_TRUSTED_ORIGINS lists `origin` (subdomain wildcards as Django reads them)."""
    scheme, host, port = origin
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in entry
        trusted = parse_origin(entry.replace("://*.", "://", 1))
        if trusted is None or trusted[0] != scheme or trusted[2] != port:
            continue
        if host == trusted[1] or (wildcard and is_same_domain(host, "." + trusted[1])):
            return True
    return False


def origin_allowed(scope) -> bool:
    raw = scope_header(scope, b"origin")
    if raw is None:
        return False
    origin = parse_origin(raw)
    return origin is not None and (origin in site_origins(scope) or trusted_origin(origin))


def is_program_handshake(scope) -> bool:
    """No Origin (not a browser) and an API key offered: the consumer decides on the key."""
    return scope_header(scope, b"origin") is None and socket_credential(scope) is not None


class SameOriginOrApiKey:
    """ASGI middleware for the websocket protocol: a same-origin browser, or a program with a key."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not (is_program_handshake(scope) or origin_allowed(scope)):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
