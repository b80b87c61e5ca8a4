"""Edit and regenerate as versions, the context meter, in a real browser (fake model).

The fake model answers "You said: <the message>"; a message with `[[fake:prompt]]` makes it
answer with the whole prompt it received, which shows what history reached it.
"""

from __future__ import annotations

import pytest

from .conftest import skip_without_browser, wait_ready

skip_without_browser()

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

ANSWERS = ".msg.assistant"
QUESTIONS = ".msg.user"


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def expect_done(page, text: str) -> None:
    answer = page.locator(ANSWERS).last
    expect(answer).to_have_attribute("data-state", "done", timeout=30_000)
    expect(answer.locator(".md")).to_have_text(text)
    expect(page.locator("#send")).to_be_visible()


def edit(page, index: int, text: str) -> None:
    question = page.locator(QUESTIONS).nth(index)
    question.hover()
    question.locator(".edit-question").click()
    box = question.locator(".edit-box")
    box.fill(text)
    box.press("Enter")


def test_edit_a_question_switch_versions_and_reload(page, shot):
    page.goto("/")
    wait_ready(page)
    for text in ("one", "two", "three"):
        send(page, text)
        expect_done(page, f"You said: {text}")
    expect(page.locator(QUESTIONS)).to_have_count(3)

    edit(page, 1, "TWO [[fake:prompt]]")
    expect_done(page, "Prompt: user: one | assistant: You said: one | user: TWO [[fake:prompt]]")
    expect(page.locator(QUESTIONS)).to_have_count(2)  # the old third turn is on the other branch
    second = page.locator(QUESTIONS).nth(1)
    expect(second.locator(".version-count")).to_have_text("2/2")
    shot(page, "tree-edited")

    # A follow-up continues the edited branch: the abandoned "two" and "three" are never sent.
    send(page, "next [[fake:prompt]]")
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "done", timeout=30_000)
    prompt = page.locator(ANSWERS).last.locator(".md").inner_text()
    assert "TWO" in prompt and "user: two" not in prompt and "three" not in prompt

    page.locator(QUESTIONS).nth(1).locator(".version-prev").click()
    expect(page.locator(QUESTIONS).nth(1).locator(".bubble")).to_have_text("two")
    expect(page.locator(QUESTIONS).nth(1).locator(".version-count")).to_have_text("1/2")
    expect(page.locator(ANSWERS).nth(1).locator(".md")).to_have_text("You said: two")
    expect(page.locator(QUESTIONS)).to_have_count(3)
    expect(page.locator(ANSWERS).last.locator(".md")).to_have_text("You said: three")

    page.reload()
    wait_ready(page)
    expect(page.locator(QUESTIONS).nth(1).locator(".bubble")).to_have_text("two")
    expect(page.locator(QUESTIONS)).to_have_count(3)
    shot(page, "tree-switched-back")


def test_regenerate_twice_and_flip_between_three_answers(page, shot):
    page.goto("/")
    wait_ready(page)
    send(page, "hello")
    expect_done(page, "You said: hello")
    for count in (2, 3):
        page.locator(ANSWERS).last.locator(".regenerate").click()
        expect_done(page, "You said: hello")
        expect(page.locator(ANSWERS).last.locator(".version-count")).to_have_text(f"{count}/{count}")
    expect(page.locator(QUESTIONS)).to_have_count(1)  # regenerating never repeats the question
    answer = page.locator(ANSWERS).last
    answer.locator(".version-prev").click()
    expect(page.locator(ANSWERS).last.locator(".version-count")).to_have_text("2/3")
    page.locator(ANSWERS).last.locator(".version-prev").click()
    expect(page.locator(ANSWERS).last.locator(".version-count")).to_have_text("1/3")
    expect(page.locator(ANSWERS).last.locator(".version-prev")).to_be_disabled()
    page.locator(ANSWERS).last.locator(".version-next").click()
    expect(page.locator(ANSWERS).last.locator(".version-count")).to_have_text("2/3")
    shot(page, "tree-regenerated")
