"""CORS on a live `manage.py serve` with CHATGLM_CORS_ORIGINS=* (it starts: no corsheaders.E013):
the program API allows any origin and the headers real clients send, never with credentials;
the page's own API is not exposed. The browser side is tests/browser/test_original_demo.py."""

import subprocess
import sys

import httpx
import pytest

from tests.server import ROOT, ServerFactory

# What real clients send cross-origin: the original demo's SSE helper (Cache-Control,
# Last-Event-ID), the openai SDK in a browser (Authorization, x-stainless-*).
CLIENT_HEADERS = ("authorization, cache-control, content-type, last-event-id, x-stainless-arch, x-stainless-lang, "
                  "x-stainless-os, x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, "
                  "x-stainless-runtime-version, x-stainless-timeout")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("cors"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def server(servers):
    return servers.start(env={"CHATGLM_CORS_ORIGINS": "*"})


def preflight(server, path, origin="http://elsewhere.example:3000", method="POST", headers=CLIENT_HEADERS):
    return httpx.options(f"{server.url}{path}", headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers})


@pytest.mark.parametrize("path", ["/chat", "/stream", "/clear", "/v1/chat/completions", "/v1/completions",
                                  "/v1/models", "/v1/no-such-thing"])
@pytest.mark.parametrize("origin", ["http://elsewhere.example:3000", "null"])  # null: a page opened from file://
def test_preflight_allows_any_origin_and_client_headers(server, path, origin):
    r = preflight(server, path, origin)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
    assert allowed == {"*", "authorization"}  # `*` covers every header but Authorization (Fetch standard)
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in r.headers


def test_answers_carry_cors_headers_and_no_credentials(server):
    r = httpx.post(f"{server.url}/v1/chat/completions", headers={"Origin": "null", "Cache-Control": "no-cache"},
                   json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "You said: hi"
    assert r.headers["access-control-allow-origin"] == "*"
    assert {"x-request-id", "retry-after"} <= set(r.headers["access-control-expose-headers"].split(", "))
    assert "access-control-allow-credentials" not in r.headers
    r = httpx.get(f"{server.url}/v1/embeddings", headers={"Origin": "http://elsewhere.example:3000"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    assert r.headers["access-control-allow-origin"] == "*"  # a browser SDK can read the error


@pytest.mark.parametrize("path", ["/api/conversations", "/", "/accounts/login/", "/healthz"])
def test_the_page_api_is_not_exposed(server, path):
    for r in (preflight(server, path, method="GET"),
              httpx.get(f"{server.url}{path}", headers={"Origin": "http://elsewhere.example:3000"})):
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-credentials" not in r.headers


def test_listed_origins(servers):
    server = servers.start(env={"CHATGLM_CORS_ORIGINS": "http://app.example:8080,null"},
                           data_dir=servers.tmp_path / "listed")
    assert preflight(server, "/stream", "http://app.example:8080").headers["access-control-allow-origin"] == \
        "http://app.example:8080"
    assert preflight(server, "/stream", "null").headers["access-control-allow-origin"] == "null"
    assert "access-control-allow-origin" not in preflight(server, "/stream", "http://evil.example").headers
    assert "access-control-allow-credentials" not in preflight(server, "/stream", "null").headers


@pytest.mark.parametrize("value", ["*", "*,http://app.example:8080", "null"])
def test_check_passes(value, tmp_path):
    env = {"CHATGLM_CORS_ORIGINS": value, "CHATGLM_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_with_api_keys_a_cross_origin_call_needs_its_key(servers):
    """CORS * with API keys: a browser client on any origin gets in with its key only; a
    session cookie sent along (a browser never sends one cross-origin: no credentials) is
    not enough; the 401 carries CORS headers so a browser SDK can read it."""
    server = servers.start(env={"CHATGLM_CORS_ORIGINS": "*", "CHATGLM_API_KEYS": "web:sk-web"},
                           data_dir=servers.tmp_path / "keyed")
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    origin = {"Origin": "http://elsewhere.example:3000"}
    with httpx.Client(base_url=server.url) as http:
        http.get("/")  # a page session and CSRF cookie, as a browser on the site would hold
        assert "sessionid" in http.cookies or "csrftoken" in http.cookies
        refused = http.post("/v1/chat/completions", json=body, headers=origin)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        assert refused.headers["access-control-allow-origin"] == "*"
        refused = http.post("/stream", json={"query": "hi"},
                            headers={**origin, "X-CSRFToken": http.cookies.get("csrftoken", "")})
        assert refused.status_code in (401, 403)
    ok = httpx.post(f"{server.url}/v1/chat/completions", json=body,
                    headers={**origin, "Authorization": "Bearer sk-web", "x-stainless-os": "Linux"})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "You said: hi"
    assert "access-control-allow-credentials" not in ok.headers
