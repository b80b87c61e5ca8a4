"""The WebSocket Origin check compares scheme, host and port with the site's own origins."""

import pytest
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator

from chat.ws_origin import origin_allowed, parse_origin
from chatglm_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


def scope(origin, host="127.0.0.1:8800", server=("127.0.0.1", 8800), extra=()):
    headers = [(b"host", host.encode())] + [(k, v) for k, v in extra]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "websocket", "headers": headers, "server": list(server), "query_string": b""}


def test_parse_origin_fills_default_ports_and_rejects_junk():
    assert parse_origin("http://LocalHost") == ("http", "localhost", 80)
    assert parse_origin("https://example.com") == ("https", "example.com", 443)
    assert parse_origin("http://[::1]:8800") == ("http", "[::1]", 8800)
    for junk in ("null", "file://", "http://", "ftp://localhost", "http://a:b@localhost", "http://localhost:99999"):
        assert parse_origin(junk) is None


@pytest.mark.parametrize("origin", [
    "http://127.0.0.1:8800",       # the request's own Host
    "http://localhost:8800",       # an ALLOWED_HOSTS entry on the listening port
    "http://[::1]:8800",
])
def test_own_origins_are_accepted(origin):
    assert origin_allowed(scope(origin))


@pytest.mark.parametrize("origin", [
    "http://127.0.0.1:9999",       # the same host name on another port: the reported hijack
    "http://localhost:1234",
    "http://127.0.0.1",            # port 80 is another origin too
    "https://127.0.0.1:8800",      # another scheme
    "http://evil.example:8800",    # another host on the same port
    "null",                        # sandboxed frames, file:// pages
])
def test_other_origins_are_refused(origin):
    assert not origin_allowed(scope(origin))


def test_a_host_header_outside_allowed_hosts_confers_nothing():
    assert not origin_allowed(scope("http://evil.example:8800", host="evil.example:8800"))


def test_https_behind_a_proxy(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    proxied = dict(host="chat.example.com", server=("127.0.0.1", 8800), extra=[(b"x-forwarded-proto", b"https")])
    assert origin_allowed(scope("https://chat.example.com", **proxied))
    assert not origin_allowed(scope("http://chat.example.com", **proxied))
    assert not origin_allowed(scope("https://chat.example.com:8443", **proxied))


def test_csrf_trusted_origins_are_exact_with_subdomain_wildcards(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com", "https://*.corp.example"]
    assert origin_allowed(scope("https://chat.example.com"))
    assert origin_allowed(scope("https://team.corp.example"))
    assert not origin_allowed(scope("http://chat.example.com"))
    assert not origin_allowed(scope("https://chat.example.com:444"))
    assert not origin_allowed(scope("https://chat.example.com.evil.example"))


async def handshake(headers, path="/ws/chat/"):
    communicator = WebsocketCommunicator(application, path, headers=headers)
    communicator.scope["server"] = ["127.0.0.1", 8800]
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    return connected


async def test_the_asgi_application_refuses_another_port_of_the_same_host(engine):
    host = (b"host", b"127.0.0.1:8800")
    assert await handshake([host, (b"origin", b"http://127.0.0.1:8800")])
    assert not await handshake([host, (b"origin", b"http://127.0.0.1:9999")])
    assert not await handshake([host, (b"origin", b"http://localhost:1234")])
