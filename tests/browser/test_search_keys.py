"""Search by message text and the keyboard shortcuts, in a real browser (fake model)."""

from __future__ import annotations

import pytest

from .conftest import skip_without_browser, wait_ready

skip_without_browser()

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

ANSWERS = ".msg.assistant"


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def expect_done(page, text: str) -> None:
    answer = page.locator(ANSWERS).last
    expect(answer).to_have_attribute("data-state", "done", timeout=30_000)
    expect(answer.locator(".md")).to_have_text(text)
    expect(page.locator("#send")).to_be_visible()


def test_search_finds_a_word_inside_an_answer_and_opens_there(page, shot):
    page.goto("/")
    wait_ready(page)
    send(page, "tell me about quinces")  # the answer repeats it: "You said: tell me about quinces"
    expect_done(page, "You said: tell me about quinces")
    for text in ("first filler", "second filler"):
        send(page, text)
        expect_done(page, f"You said: {text}")
    page.click("#new-chat")
    send(page, "another conversation")
    expect_done(page, "You said: another conversation")

    page.keyboard.press("Control+k")
    expect(page.locator("#search")).to_be_focused()
    page.keyboard.type("said: tell")  # only in an answer: the question has no "said:"
    hit = page.locator("#conversation-list .search-hit")
    expect(hit).to_have_count(1)
    expect(hit.locator("mark")).to_have_text("said: tell")
    shot(page, "search-hit")
    hit.click()
    found = page.locator(".msg.found")
    expect(found).to_have_count(1)
    expect(found.locator(".md")).to_have_text("You said: tell me about quinces")


def test_arrow_up_edits_the_last_question_and_escape_stops(page):
    page.goto("/")
    wait_ready(page)
    send(page, "alpha")
    expect_done(page, "You said: alpha")
    page.focus("#prompt")
    page.keyboard.press("ArrowUp")
    box = page.locator(".msg.user .edit-box")
    expect(box).to_be_focused()
    expect(box).to_have_value("alpha")
    box.fill("beta")
    box.press("Enter")
    expect_done(page, "You said: beta")
    expect(page.locator(".msg.user .version-count")).to_have_text("2/2")

    send(page, " ".join(f"word{i}" for i in range(90)))
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "streaming", timeout=15_000)
    page.keyboard.press("Escape")
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "cancelled", timeout=15_000)
