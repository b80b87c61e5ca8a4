"""A conversation whose answer went through a tool call (made on /v1/chat/completions), opened
in the chat page and its share link: the call and the result show as small text blocks above the
answer, never as HTML, and asking on from the page continues it."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from .conftest import skip_without_browser, wait_ready

skip_without_browser()

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

PAYLOAD = '<img src=x onerror="window.__pwned=1">'
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def tool_conversation(server) -> None:
    messages = [{"role": "user", "content": 'Weather? [[fake:call get_weather {"city": "<b>Paris</b>"}]]'}]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        first = client.post("/v1/chat/completions", json={"model": "fake", "messages": messages, "tools": [WEATHER]})
        message = first.json()["choices"][0]["message"]
        messages += [message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": PAYLOAD}]
        client.post("/v1/chat/completions", json={"model": "fake", "messages": messages, "tools": [WEATHER]})


def test_tool_steps_on_the_page_and_its_share(browser_context, chat_server, shot):
    tool_conversation(chat_server)
    page = browser_context().new_page()
    page.goto("/")
    wait_ready(page)
    page.fill("#prompt", "toolhist owner marker")
    page.press("#prompt", "Enter")
    expect(page.locator(".msg.assistant").last).to_have_attribute("data-state", "done", timeout=30_000)

    # Hand the program's conversation to this visitor (as if the page had made it).
    with sqlite3.connect(chat_server.env["CHATGLM_DATA_DIR"] + "/db.sqlite3") as db:
        [visitor] = db.execute("SELECT c.visitor FROM chat_conversation c JOIN chat_message m ON m.conversation_id = c.id "
                               "WHERE m.content = 'toolhist owner marker'").fetchone()
        [conversation] = db.execute("SELECT conversation_id FROM chat_message WHERE role = 'tool' "
                                    "ORDER BY id DESC LIMIT 1").fetchone()
        db.execute("UPDATE chat_conversation SET visitor = ? WHERE id = ?", (visitor, conversation))
    page.goto(f"/#{conversation}")
    page.reload()
    wait_ready(page)

    answer = page.locator(".msg.assistant")
    expect(answer).to_have_count(1)  # the call, the result and the final text are one answer
    expect(answer.locator(".tool-call")).to_have_text('called get_weather({"city": "<b>Paris</b>"})')
    expect(answer.locator(".tool-result summary")).to_have_text("get_weather result")
    answer.locator(".tool-result summary").click()
    expect(answer.locator(".tool-result pre")).to_have_text(PAYLOAD)
    expect(answer.locator(".md")).to_contain_text("The tool said:")
    assert page.locator(".msg.assistant img, .msg.assistant b").count() == 0
    shot(page, "tool-steps")

    # Asked on from the page (the WebSocket), the conversation goes on.
    page.fill("#prompt", "and tomorrow?")
    page.press("#prompt", "Enter")
    expect(answer.last).to_have_attribute("data-state", "done", timeout=30_000)
    expect(answer.last.locator(".md")).to_have_text("You said: and tomorrow?")
    expect(answer).to_have_count(2)

    page.click("#share-open")
    page.click(".share-create")
    link = page.locator(".share-url").first
    expect(link).to_be_visible()
    reader = browser_context().new_page()
    reader.goto(link.input_value())
    expect(reader.locator("body")).to_have_attribute("data-ready", "true")
    expect(reader.locator(".msg.assistant").first.locator(".tool-call")).to_have_text(
        'called get_weather({"city": "<b>Paris</b>"})')
    expect(reader.locator(".msg.assistant")).to_have_count(2)
    assert reader.locator(".msg.assistant img, .msg.assistant b").count() == 0
    assert page.evaluate("() => window.__pwned") is None and reader.evaluate("() => window.__pwned") is None
