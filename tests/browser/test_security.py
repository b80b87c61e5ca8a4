"""Security in a real browser (Chromium): the WebSocket Origin check against a page served from
another loopback port, and a Content-Security-Policy that the page and the admin pass."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.server import ROOT

from .conftest import skip_without_browser, wait_ready

skip_without_browser()

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

# Opens the chat server's WebSocket and says what became of it, as a hostile page would.
PROBE = """
([url, query]) => new Promise((resolve) => {
  const socket = new WebSocket(url);
  const frames = [];
  socket.onopen = () => socket.send(JSON.stringify({type: "chat", query}));
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    frames.push(frame.type);
    if (frame.type === "done") { socket.close(); resolve({code: "done", frames}); }
  };
  socket.onclose = (event) => resolve({code: event.code, frames});
  setTimeout(() => { socket.close(); resolve({code: "timeout", frames}); }, 8000);
})
"""

# Reports every CSP violation of every document of the context to the test.
VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportViolation(`${event.violatedDirective} ${event.blockedURI} ${event.sourceFile}:${event.lineNumber}`);
});
"""


@pytest.fixture
def hostile_origin():
    """A page on another port of 127.0.0.1: the same host name as the chat server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>elsewhere</title><p>another site on another port</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_page_on_another_port_cannot_open_the_socket_with_the_visitors_cookie(browser_context, chat_server,
                                                                                  hostile_origin):
    context = browser_context()
    page = context.new_page()
    page.goto("/")
    wait_ready(page)
    # The victim has a session: a visitor of the chat, made by their first conversation.
    assert page.evaluate("""async () => {
      const token = (document.cookie.match(/(?:^|; )csrftoken=([^;]+)/) || [])[1]
        || document.querySelector('meta[name="csrf-token"]')?.content;
      const r = await fetch("/api/conversations", {method: "POST", body: "{}",
        headers: {"Content-Type": "application/json", "X-CSRFToken": token}});
      return r.status;
    }""") == 201
    assert any(c["name"] == "sessionid" for c in context.cookies(chat_server.url))
    socket_url = f"{chat_server.ws_url}/ws/chat/"
    # On the site's own page the same script opens the socket and chats (the control) ...
    own = page.evaluate(PROBE, [socket_url, "asked by the page"])
    assert own["code"] == "done" and own["frames"][0] == "start", own
    # ... while from another port of the same host it is refused at the handshake.
    elsewhere = context.new_page()
    elsewhere.goto(f"{hostile_origin}/")
    result = elsewhere.evaluate(PROBE, [socket_url, "asked by the hijacker"])
    assert result["code"] == 1006 and result["frames"] == [], result
    with sqlite3.connect(chat_server.env["DATABASE_URL"].removeprefix("sqlite:///")) as db:
        asked = {row[0] for row in db.execute("SELECT content FROM chat_message WHERE role = 'user'")}
    assert "asked by the page" in asked and "asked by the hijacker" not in asked


@pytest.fixture
def violations(browser_context):
    """A context that records CSP violations (and a list they go to)."""
    found = []
    context = browser_context()
    context.expose_binding("reportViolation", lambda source, text: found.append(f"{source['frame'].url}: {text}"))
    context.add_init_script(VIOLATIONS)
    return context, found


def test_the_page_streams_an_answer_without_a_csp_violation(violations, signup):
    context, found = violations
    page = context.new_page()
    signup(page, "csp")
    page.fill("#prompt", "Hello **CSP** `code`\n\n```python\nprint('hi')\n```")
    page.press("#prompt", "Enter")
    answer = page.locator(".msg.assistant").last
    expect(answer).to_have_attribute("data-state", "done", timeout=30_000)
    expect(answer.locator(".md strong")).to_have_text("CSP")
    assert page.evaluate("document.getElementById('connection').dataset.kind") == "websocket"
    assert found == []
    # The listener works, and the policy blocks: an injected inline script is reported, not run.
    page.evaluate("""() => { const s = document.createElement('script');
                             s.textContent = 'window.injected = 1'; document.body.append(s); }""")
    page.wait_for_timeout(200)
    assert page.evaluate("window.injected") is None
    assert any("script-src" in v for v in found), found


def test_the_stream_fallback_and_the_account_pages_pass_the_csp(violations):
    context, found = violations
    context.add_init_script("window.WebSocket = undefined;")  # the page falls back to POST /stream
    page = context.new_page()
    for url in ("/accounts/login/", "/accounts/signup/"):
        page.goto(url)
        expect(page.locator("main.auth-card")).to_be_visible()
    page.goto("/")
    page.wait_for_function("() => window.chatApp !== undefined")
    page.fill("#prompt", "over HTTP")
    page.press("#prompt", "Enter")
    expect(page.locator(".msg.assistant").last.locator(".md")).to_have_text("You said: over HTTP", timeout=30_000)
    assert found == []


def test_the_admins_conversation_pages_load_without_a_csp_violation(violations, chat_server, signup):
    context, found = violations
    page = context.new_page()
    signup(page, "admincsp")
    page.fill("#prompt", "something to inspect")
    page.press("#prompt", "Enter")
    expect(page.locator(".msg.assistant").last).to_have_attribute("data-state", "done", timeout=30_000)
    password = "staff password 9876"
    env = {**chat_server.env, "DJANGO_SUPERUSER_PASSWORD": password}
    name = f"root{os.getpid()}"
    made = subprocess.run([sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", name,
                           "--email", "root@example.com"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    admin = context.new_page()
    admin.goto("/admin/login/")
    admin.fill("#id_username", name)
    admin.fill("#id_password", password)
    admin.click("input[type=submit]")
    admin.wait_for_url(re.compile(r"/admin/$"))
    admin.goto("/admin/chat/conversation/?q=inspect")
    admin.click("#result_list tbody tr th a")
    expect(admin.locator("#content h2, #content h1").first).to_be_visible()
    admin.wait_for_load_state("networkidle")
    admin.goto("/admin/chat/message/")
    admin.click("#result_list tbody tr th a")
    admin.wait_for_load_state("networkidle")
    admin.goto("/admin/chat/invite/add/")
    admin.wait_for_load_state("networkidle")
    assert found == []


def test_with_api_keys_the_page_chats_and_a_script_that_loads_it_cannot_use_the_api(chromium, server_factory):
    server = server_factory.start(env={"CHATGLM_API_KEYS": "ci:sk-browser-test"})
    context = chromium.new_context(base_url=server.url)
    try:
        page = context.new_page()
        page.goto("/")
        page.wait_for_function("() => window.chatApp !== undefined")
        page.fill("#prompt", "over the socket")
        page.press("#prompt", "Enter")
        expect(page.locator(".msg.assistant").last.locator(".md")).to_have_text("You said: over the socket")
        assert page.evaluate("document.getElementById('connection').dataset.kind") == "websocket"
        fallback = context.new_page()
        fallback.add_init_script("window.WebSocket = undefined;")
        fallback.goto("/")
        fallback.wait_for_function("() => window.chatApp !== undefined")
        fallback.fill("#prompt", "over /stream")
        fallback.press("#prompt", "Enter")
        expect(fallback.locator(".msg.assistant").last.locator(".md")).to_have_text("You said: over /stream")
    finally:
        context.close()
    # A script that loads the page like a browser still cannot use the program API.
    with httpx.Client(base_url=server.url) as script:
        script.get("/")
        csrf = {"X-CSRFToken": script.cookies["csrftoken"]}
        assert script.post("/chat", json={"query": "q"}, headers=csrf).status_code == 401
        assert script.get("/clear").status_code == 401
        assert script.post("/v1/chat/completions", json={"model": "fake", "messages": []},
                           headers=csrf).status_code == 401
        keyed = script.post("/chat", json={"query": "q"}, headers={"Authorization": "Bearer sk-browser-test"})
        assert keyed.status_code == 200
