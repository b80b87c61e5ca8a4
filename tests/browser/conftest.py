"""Browser tests: Debian's Chromium (headless) driven by Playwright against a live server.

The server is a real `manage.py serve --model fake` (tests/server.py), shared by the tests of
a module: it runs with a small per-token delay, so a long message streams for seconds (time to
stop it or reload mid-answer), and with one sequence per batch, so a second request waits in line.
Each test gets fresh browser contexts (their own cookies), so tests do not see each other's
conversations. Screenshots go to tests/browser/artifacts/ (ignored by git).
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest

from tests.server import ServerFactory

CHROMIUM = os.environ.get("CHATGLM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DELAY_MS = 20



def skip_without_browser() -> None:
    """Skip the calling test module when Chromium or Playwright is missing (call at import)."""
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
    pytest.importorskip("playwright.sync_api")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="module")
def chromium():
    """Module scope: Playwright's sync API keeps an event loop marked running on the main
    thread while it is started, and async tests after it would fail, so it stops at once."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("browser-server"))
    server = factory.start(env={"CHATGLM_FAKE_DELAY_MS": str(DELAY_MS), "CHATGLM_MAX_BATCH": "1"})
    yield server
    factory.stop_all()


@pytest.fixture
def browser_context(chromium, chat_server):
    """A factory of fresh contexts (own cookies and storage) on the live server.

    Closed after the test, which then fails if any page threw an uncaught JavaScript error.
    """
    contexts = []
    errors = []

    def watch(page):
        page.errors = []

        def record(error):
            page.errors.append(str(error))
            errors.append(f"{page.url}: {error}")

        page.on("pageerror", record)

    def make(**options):
        options.setdefault("viewport", {"width": 1280, "height": 800})
        context = chromium.new_context(base_url=chat_server.url, **options)
        context.set_default_timeout(15_000)
        context.on("page", watch)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def page(browser_context):
    """A page in a fresh context; its uncaught JavaScript errors are in `page.errors`."""
    return browser_context().new_page()


_users = itertools.count(1)


@pytest.fixture
def signup():
    """Sign a page up with a new account and land on the chat page; returns the username."""

    def do(page, prefix: str = "user") -> str:
        username = f"{prefix}{os.getpid()}x{next(_users)}"
        page.goto("/accounts/signup/")
        page.fill("input[name=username]", username)
        page.fill("input[name=password1]", "correct horse battery staple 42")
        page.fill("input[name=password2]", "correct horse battery staple 42")
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/accounts/" not in url)
        page.goto("/")
        wait_ready(page)
        return username

    return do


def wait_ready(page) -> None:
    """The app module has run (its sidebar and composer are live)."""
    page.wait_for_function("() => window.chatApp !== undefined")


@pytest.fixture
def shot():
    """Save a screenshot under tests/browser/artifacts/<name>.png and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str, **options) -> Path:
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), **options)
        return path

    return take
