"""Share links in a real browser: read-only in a fresh context, 404 once revoked, and model
output that tries to run script stays inert there too."""

from __future__ import annotations

import httpx
import pytest

from .conftest import skip_without_browser, wait_ready

skip_without_browser()

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

ANSWERS = ".msg.assistant"
PAYLOADS = '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> [x](javascript:window.__pwned=3)'


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def test_share_a_conversation_read_only_then_revoke(browser_context, chat_server, shot):
    owner = browser_context().new_page()
    owner.goto("/")
    wait_ready(owner)
    send(owner, f"**bold** {PAYLOADS}")
    expect(owner.locator(ANSWERS).last).to_have_attribute("data-state", "done", timeout=30_000)
    expect(owner.locator("#send")).to_be_visible()

    owner.click("#share-open")
    owner.click(".share-create")
    url = owner.locator(".share-url").first
    expect(url).to_be_visible()
    link = url.input_value()
    assert "/s/" in link
    shot(owner, "share-dialog")

    reader = browser_context().new_page()  # another browser: no cookies of the owner
    reader.goto(link)
    expect(reader.locator("body")).to_have_attribute("data-ready", "true")
    expect(reader.locator(".msg.user .bubble")).to_have_text(f"**bold** {PAYLOADS}")
    expect(reader.locator(".msg.assistant .md strong")).to_have_text("bold")
    assert reader.locator("#prompt").count() == 0 and reader.locator("#sidebar").count() == 0
    assert reader.locator(".msg.assistant img, .msg.assistant script").count() == 0
    assert reader.evaluate("() => window.__pwned") is None
    for a in reader.locator(".msg.assistant a").all():
        assert not (a.get_attribute("href") or "").startswith("javascript:")
    assert reader.context.cookies() == []  # the shared page carries no session
    assert reader.locator('meta[name="robots"]').get_attribute("content").startswith("noindex")
    shot(reader, "share-page")

    owner.click(".share-revoke")
    expect(owner.locator(".share-item")).to_have_count(0)
    assert httpx.get(link).status_code == 404
    response = reader.goto(link)
    assert response.status == 404
