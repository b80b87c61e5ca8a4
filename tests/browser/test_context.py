"""The context meter on a short-context fake model (CHATGLM_FAKE_CONTEXT): it grows with the
conversation, warns before history is left out, and the answer says when it was."""

from __future__ import annotations

import re

import pytest

from tests.server import ServerFactory

from .conftest import DELAY_MS, skip_without_browser, wait_ready

skip_without_browser()

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

ANSWERS = ".msg.assistant"


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    """This module's own server: a fake model with a 300-token context."""
    factory = ServerFactory(tmp_path_factory.mktemp("context-server"))
    server = factory.start(env={"CHATGLM_FAKE_DELAY_MS": str(DELAY_MS // 4), "CHATGLM_FAKE_CONTEXT": "300"})
    yield server
    factory.stop_all()


def used_tokens(page) -> int:
    text = page.locator("#context-meter .context-text").inner_text()
    return int(re.search(r"Context: ([\d,]+) of 300 tokens", text).group(1).replace(",", ""))


def test_meter_grows_warns_and_truncation_is_reported(page, shot):
    page.goto("/")
    wait_ready(page)
    seen = []
    for i in range(4):
        page.fill("#prompt", f"turn {i} " + "words " * 10)
        page.press("#prompt", "Enter")
        expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "done", timeout=30_000)
        expect(page.locator("#context-meter")).to_be_visible()
        page.wait_for_function(
            "n => (document.querySelector('#context-meter .context-text').textContent.match(/Context: (\\d+)/) || [])[1] > n",
            arg=seen[-1] if seen else 0,
        )
        seen.append(used_tokens(page))
    assert seen == sorted(seen) and len(set(seen)) == 4  # it grows with every turn
    expect(page.locator("#context-meter")).to_have_class(re.compile(r"\bwarn\b"))
    expect(page.locator("#context-meter")).to_contain_text("will not be sent")
    shot(page, "context-warning")

    # The next answer is generated without the oldest turns, and says so.
    page.fill("#prompt", "one more")
    page.press("#prompt", "Enter")
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "done", timeout=30_000)
    expect(page.locator(ANSWERS).last.locator(".truncated")).to_contain_text("left out of this answer")
    shot(page, "context-truncated")
