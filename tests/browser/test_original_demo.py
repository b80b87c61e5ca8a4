"""The original ChatGLM demo's own web page (tests/fixtures/original_demo, unmodified but for its
`baseUrl`) in Chromium, against a real `manage.py serve --model fake` with CHATGLM_CORS_ORIGINS=*:
opened from another origin (another loopback port) and from file://, it streams answers.

Its SSE helper sends `Cache-Control` and `Last-Event-ID` (not CORS-safelisted), so the browser
sends a preflight first; before CORS allowed them the page showed its "cannot answer" message,
which the control test shows it still does against a server without CORS.
"""

from __future__ import annotations

import functools
import re
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from tests.browser.conftest import skip_without_browser
from tests.server import ServerFactory, free_port
from tests.test_readme_examples import examples

skip_without_browser()

DEMO = Path(__file__).resolve().parent.parent / "fixtures" / "original_demo" / "static"
ORIGINAL_BASE_URL = 'var baseUrl = "http://localhost:8800/"'
CANNOT_ANSWER = "对不起，ChatGLM暂时无法回答您的问题"
QUESTION = "你好，世界 🙂"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("demo-servers"))
    yield factory
    factory.stop_all()


def readme_env() -> dict[str, str]:
    """The environment of the README's command for the demo page (`NAME='value' … serve`)."""
    language, command = examples()["original-demo"]
    env = dict(re.findall(r"(\w+)='([^']*)' ", command.split("manage.py serve")[0]))
    assert env, command
    return env


@pytest.fixture(scope="module")
def cors_server(servers):
    return servers.start(env={**readme_env(), "CHATGLM_FAKE_DELAY_MS": "5"})


def demo_copy(folder: Path, server_url: str) -> Path:
    """The demo page in `folder`, pointed at `server_url`: only its baseUrl line changes."""
    shutil.copytree(DEMO, folder)
    script = folder / "js" / "chatglm.js"
    source = script.read_text(encoding="utf-8")
    assert source.count(ORIGINAL_BASE_URL) == 1
    script.write_text(source.replace(ORIGINAL_BASE_URL, f'var baseUrl = "{server_url}/"'), encoding="utf-8")
    return folder / "chatglm.html"


@pytest.fixture(scope="module")
def static_site(tmp_path_factory, cors_server):
    """The demo served by a plain static file server on another loopback port: another origin."""
    page = demo_copy(tmp_path_factory.mktemp("demo") / "static", cors_server.url)
    handler = functools.partial(QuietHandler, directory=str(page.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{httpd.server_address[1]}/chatglm.html"  # another host name and port
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def demo_page(chromium):
    context = chromium.new_context()
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.errors, page.failed = [], []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("requestfailed", lambda request: page.failed.append(f"{request.url}: {request.failure}"))
    page.on("response", lambda r: r.status >= 400 and not r.url.endswith("/favicon.ico")
            and page.failed.append(f"{r.url}: {r.status}"))
    yield page
    context.close()


def ask(page, question: str) -> str:
    """Type a question and send it as a user does; the text of the answer once it is final."""
    answers = page.locator(".alert-success .markdown-body")
    before = answers.count()
    page.fill("#inputArea", question)
    page.click("#sendBtn")
    page.wait_for_function(
        """([before, question]) => {
            const answers = document.querySelectorAll('.alert-success .markdown-body');
            const history = app.history;
            return answers.length > before && (
                answers[answers.length - 1].textContent.includes('对不起') ||
                (history.length && history[history.length - 1][0] === question));
        }""", arg=[before, question])
    return answers.nth(before).inner_text()


def assert_chats(page) -> None:
    assert ask(page, QUESTION) == f"You said: {QUESTION}"
    assert ask(page, "second question") == "You said: second question"
    # The page keeps the history the stream's last event sent, and sends it back next turn.
    assert page.evaluate("app.history") == [[QUESTION, f"You said: {QUESTION}"],
                                            ["second question", "You said: second question"]]
    assert not page.errors, page.errors
    assert not page.failed, page.failed


def test_from_another_origin(demo_page, static_site):
    demo_page.goto(static_site)
    assert_chats(demo_page)


def test_opened_from_file(demo_page, cors_server, tmp_path):
    page = demo_copy(tmp_path / "static", cors_server.url)
    demo_page.goto(page.as_uri())
    assert demo_page.evaluate("location.protocol") == "file:"  # requests from it carry `Origin: null`
    assert_chats(demo_page)


def test_browser_sdk_headers_and_no_credentials(demo_page, static_site, cors_server):
    """What the openai SDK sends from a browser (Authorization, x-stainless-*) passes CORS; a
    request with credentials (cookies) is refused by the browser: the session is never exposed."""
    demo_page.goto(static_site)
    result = demo_page.evaluate("""async (url) => {
        const r = await fetch(url + '/v1/chat/completions', {method: 'POST', headers: {
            'Authorization': 'Bearer sk-any', 'Content-Type': 'application/json', 'x-stainless-os': 'Linux',
            'x-stainless-lang': 'js', 'x-stainless-package-version': '5.0.0', 'x-stainless-retry-count': '0',
            'x-stainless-runtime': 'browser:chrome', 'x-stainless-arch': 'unknown', 'OpenAI-Beta': 'x'},
            body: JSON.stringify({model: 'fake', messages: [{role: 'user', content: 'hi'}]})});
        const failed = await fetch(url + '/v1/chat/completions', {method: 'POST', headers: {
            'Content-Type': 'application/json'}, body: JSON.stringify({model: 'fake',
            messages: [{role: 'user', content: '[[fake:error]]'}]})});
        const missing = await fetch(url + '/v1/embeddings', {method: 'POST', headers: {'Authorization': 'Bearer x',
            'Content-Type': 'application/json'}, body: '{}'});
        let credentialed;
        try {
            await fetch(url + '/v1/models', {credentials: 'include', headers: {'Authorization': 'Bearer x'}});
            credentialed = 'allowed';
        } catch (e) { credentialed = 'refused'; }
        return {status: r.status, body: await r.json(), failed: [failed.status, failed.headers.get('x-request-id'), (await failed.json()).error.message],
                missing: [missing.status, (await missing.json()).error.code], credentialed};
    }""", cors_server.url)
    assert result["status"] == 200 and result["body"]["choices"][0]["message"]["content"] == "You said: hi"
    status, request_id, message = result["failed"]
    assert status == 500 and request_id and request_id in message  # the header is exposed: SDKs read it
    assert result["missing"] == [404, "unknown_url"]
    assert result["credentialed"] == "refused"


def test_control_without_cors_the_page_cannot_answer(demo_page, servers, tmp_path):
    """The same page against a server with no CORS origins shows its 'cannot answer' message:
    what the tests above pass is the server's CORS, not the browser's leniency."""
    server = servers.start(data_dir=servers.tmp_path / "no-cors")
    demo_page.goto(demo_copy(tmp_path / "static", server.url).as_uri())
    assert ask(demo_page, "hello") == CANNOT_ANSWER
