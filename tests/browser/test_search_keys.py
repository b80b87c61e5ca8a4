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


def test_math_and_code_render_through_the_sanitizer(page, shot):
    page.goto("/")
    wait_ready(page)
    # The fake model repeats the message: "You said: " then this Markdown.
    send(page, "Euler: $e^{i\\pi} + 1 = 0$ costs $5 and $10.\n\n$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$\n\n"
               "```python\nprint('hi')\n```\n\n$\\href{javascript:alert(1)}{click}$ <math><mi>x</mi></math>")
    answer = page.locator(ANSWERS).last
    expect(answer).to_have_attribute("data-state", "done", timeout=30_000)
    md = answer.locator(".md")
    expect(md.locator("math")).to_have_count(3)  # inline, display, and the \href one (as an error/text)
    expect(md.locator(".math-block math")).to_have_attribute("display", "block")
    assert "$5 and $10" in md.inner_text()  # dollars in prose stay text
    expect(md.locator(".code-lang")).to_have_text("python")
    expect(md.locator("code.language-python")).to_contain_text("print('hi')")
    assert md.locator("a[href^='javascript']").count() == 0 and md.locator("[style]").count() == 0
    assert "<math><mi>x</mi></math>" in md.inner_text()  # raw MathML from the model is text
    shot(page, "math-and-code")
