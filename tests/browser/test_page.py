"""The chat page in a real browser, against a live server with the fake model.

The fake model answers "You said: <the message>", a token of one to three bytes at a time,
DELAY_MS apart: a long message gives seconds of streaming to stop, reload or scroll in.
"""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from .conftest import skip_without_browser, wait_ready

skip_without_browser()

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

LONG = " ".join(f"word{i}" for i in range(90))  # about 300 tokens: 6 s of streaming at 20 ms/token
ANSWERS = ".msg.assistant"

# A WebSocket that never connects: the page must fall back to POST /stream.
NO_WEBSOCKET = """
window.WebSocket = class extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.readyState = 0;
    setTimeout(() => {
      this.readyState = 3;
      this.onerror?.(new Event("error"));
      this.onclose?.(new CloseEvent("close", { code: 1006 }));
    }, 20);
  }
  send() { throw new Error("not open"); }
  close() {}
};
"""


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def answer_text(page) -> str:
    return page.locator(ANSWERS).last.locator(".md").inner_text()


def expect_done(page, text: str, timeout: float = 30_000) -> None:
    answer = page.locator(ANSWERS).last
    expect(answer).to_have_attribute("data-state", "done", timeout=timeout)
    expect(answer.locator(".md")).to_have_text(text)


def expect_titles(page, titles: list[str]) -> None:
    """The sidebar lists exactly these conversations, in this order (waits for the list to load)."""
    expect(page.locator("#conversation-list li.conversation .conversation-title")).to_have_text(titles)


# ---------------------------------------------------------------------------------------------


def test_send_streams_over_websocket_and_shows_stats(page, signup, shot):
    signup(page)
    frames = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(payload)))
    page.reload()
    wait_ready(page)

    send(page, LONG)
    answer = page.locator(ANSWERS).last
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(answer.locator(".md")).to_have_text(re.compile(r"^You"))
    partial = answer_text(page)
    shot(page, "streaming")
    expect_done(page, f"You said: {LONG}")
    assert partial and len(partial) < len(f"You said: {LONG}"), "the answer appeared while it was generated"
    assert page.evaluate("document.getElementById('connection').dataset.kind") == "websocket"
    assert any('"type": "delta"' in f or '"type":"delta"' in f for f in frames)

    # Time to first token and speed under the answer, and the user's words as sent.
    expect(answer.locator(".stats")).to_have_text(re.compile(r"s to first token · [\d.]+ tokens/s"))
    expect(page.locator(".msg.user .bubble").last).to_have_text(LONG)
    # The conversation is saved, in the sidebar and in the URL.
    expect(page.locator("#conversation-list li.conversation")).to_have_count(1)
    assert re.search(r"#[0-9a-f-]{36}$", page.url)
    expect(page.locator("#messages")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#announcer")).to_have_text("Answer complete.")
    assert not page.errors
    shot(page, "desktop-light")


def test_falls_back_to_sse_when_the_socket_cannot_connect(browser_context):
    context = browser_context()
    context.add_init_script(NO_WEBSOCKET)
    page = context.new_page()
    page.goto("/")
    wait_ready(page)

    send(page, "Hello over **HTTP**")
    expect_done(page, "You said: Hello over HTTP")
    expect(page.locator(ANSWERS).last.locator(".md strong")).to_have_text("HTTP")
    assert page.evaluate("document.getElementById('connection').dataset.kind") == "sse"

    # Stop works over /stream too: the request is aborted and the answer marked cancelled.
    send(page, LONG)
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "streaming")
    page.click("#stop")
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "cancelled")
    expect(page.locator("#send")).to_be_visible()

    # Reloading while /stream is open ends that request (and so the answer, as the seed API
    # does): the reloaded page must show how it ended, not wait forever.
    send(page, LONG)
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "streaming")
    page.reload()
    wait_ready(page)
    expect(page.locator(ANSWERS)).to_have_count(3)
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "cancelled")
    expect(page.locator("#stop")).to_be_hidden()


def test_stop_mid_stream_then_retry(page, signup, shot):
    signup(page)
    send(page, LONG)
    answer = page.locator(ANSWERS).last
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(page.locator("#stop")).to_be_visible()
    page.click("#stop")

    expect(answer).to_have_attribute("data-state", "cancelled")
    expect(answer.locator(".notice")).to_contain_text("Stopped")
    stopped = answer_text(page)
    assert f"You said: {LONG}".startswith(stopped.rstrip()), stopped
    assert len(stopped) < len(f"You said: {LONG}")
    expect(page.locator("#stop")).to_be_hidden()
    shot(page, "cancelled")

    # Saved as cancelled: a reload shows the same.
    page.reload()
    wait_ready(page)
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "cancelled")

    # Retry answers the same question again, as a second version beside the cancelled one.
    page.locator(ANSWERS).last.get_by_role("button", name="Retry this question").click()
    expect_done(page, f"You said: {LONG}")
    expect(page.locator(ANSWERS)).to_have_count(1)
    expect(page.locator(ANSWERS).last.locator(".version-count")).to_have_text("2/2")


def test_reload_mid_stream_reattaches_to_the_answer(page, signup):
    signup(page)
    send(page, LONG)
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "streaming")
    page.wait_for_function("() => document.querySelector('.msg.assistant .md').textContent.length > 40")
    url = page.url

    page.reload()
    wait_ready(page)
    assert page.url == url
    answer = page.locator(ANSWERS).last
    # Still being generated: the page subscribes, gets the text so far, then the rest as it comes.
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(page.locator("#stop")).to_be_visible()
    seen = len(answer_text(page))
    page.wait_for_function(
        f"() => document.querySelector('.msg.assistant:last-of-type .md').textContent.length > {seen + 20}")
    expect(answer).to_have_attribute("data-state", "streaming")
    expect_done(page, f"You said: {LONG}")
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator(".msg.user")).to_have_count(1)
    assert not page.errors

    # Last-opened is remembered without the hash as well.
    page.goto("/")
    wait_ready(page)
    expect(page.locator(".msg.user .bubble")).to_have_text(LONG)


def test_stop_after_reload_stops_the_followed_answer(page, signup):
    signup(page)
    send(page, LONG)
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "streaming")
    page.reload()
    wait_ready(page)
    answer = page.locator(ANSWERS).last
    expect(answer).to_have_attribute("data-state", "streaming")
    page.click("#stop")
    expect(answer).to_have_attribute("data-state", "cancelled")
    assert len(answer_text(page)) < len(f"You said: {LONG}")
    page.reload()
    wait_ready(page)
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "cancelled")


def test_enter_while_composing_does_not_send(page, shot):
    page.goto("/")
    wait_ready(page)
    shot(page, "empty-state")
    page.fill("#prompt", "にほんご")
    for init in ("{key: 'Enter', code: 'Enter', isComposing: true}", "{key: 'Enter', code: 'Enter', keyCode: 229}"):
        page.evaluate(
            f"""() => document.getElementById('prompt').dispatchEvent(
                    new KeyboardEvent('keydown', {{...{init}, bubbles: true, cancelable: true}}))"""
        )
    page.wait_for_timeout(300)
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#prompt")).to_have_value("にほんご")

    # Shift+Enter breaks the line; Enter sends.
    page.press("#prompt", "Shift+Enter")
    page.keyboard.type("second line")
    expect(page.locator("#prompt")).to_have_value("にほんご\nsecond line")
    expect(page.locator(".msg")).to_have_count(0)
    page.press("#prompt", "Enter")
    expect_done(page, "You said: にほんご\nsecond line")
    expect(page.locator("#prompt")).to_have_value("")


def test_sidebar_reload_open_rename_search_delete(page, signup):
    signup(page)
    send(page, "first topic")
    expect_done(page, "You said: first topic")
    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    send(page, "second topic")
    expect_done(page, "You said: second topic")

    page.goto("/")  # no hash: the last opened conversation
    wait_ready(page)
    expect(page.locator("#conversation-list li.conversation")).to_have_count(2)
    expect_titles(page, ["second topic", "first topic"])  # newest first

    # Open the older one from the sidebar.
    page.locator("#conversation-list a", has_text="first topic").click()
    expect(page.locator(".msg.user .bubble")).to_have_text("first topic")
    expect(page.locator("#conversation-title")).to_have_text("first topic")

    # Rename it (keyboard: Enter saves).
    item = page.locator("#conversation-list li.conversation", has_text="first topic")
    item.hover()
    item.get_by_role("button", name=re.compile("^Rename")).click()
    page.fill(".rename-input", "Renamed topic")
    page.press(".rename-input", "Enter")
    expect(page.locator("#conversation-list")).to_contain_text("Renamed topic")
    expect(page.locator("#conversation-title")).to_have_text("Renamed topic")
    page.reload()
    wait_ready(page)
    expect(page.locator("#conversation-list")).to_contain_text("Renamed topic")

    # Search by title.
    page.fill("#search", "renamed")
    expect(page.locator("#conversation-list li.conversation")).to_have_count(1)
    page.fill("#search", "")
    expect(page.locator("#conversation-list li.conversation")).to_have_count(2)

    # Delete it (confirm dialog accepted): gone, also after a reload; the page starts a new chat.
    page.once("dialog", lambda dialog: dialog.accept())
    item = page.locator("#conversation-list li.conversation", has_text="Renamed topic")
    item.hover()
    item.get_by_role("button", name=re.compile("^Delete")).click()
    expect(page.locator("#conversation-list li.conversation")).to_have_count(1)
    expect(page.locator(".msg")).to_have_count(0)
    page.reload()
    wait_ready(page)
    expect_titles(page, ["second topic"])


def test_two_users_see_only_their_own_conversations(browser_context, signup):
    alice = browser_context().new_page()
    bob = browser_context().new_page()
    signup(alice, "alice")
    signup(bob, "bob")
    send(alice, "alice secret")
    send(bob, "bob secret")
    expect_done(alice, "You said: alice secret")
    expect_done(bob, "You said: bob secret")
    alice_url = alice.url

    for page in (alice, bob):
        page.reload()
        wait_ready(page)
    expect_titles(alice, ["alice secret"])
    expect_titles(bob, ["bob secret"])

    # Bob cannot open Alice's conversation by its URL.
    bob.goto(alice_url)
    wait_ready(bob)
    expect(bob.locator(".toast")).to_contain_text("does not exist")
    expect(bob.get_by_text("alice secret")).to_have_count(0)

    # Logging out is a POST form with the CSRF token; afterwards the list is empty.
    bob.get_by_role("button", name="Log out").click()
    wait_ready(bob)
    expect(bob.get_by_role("link", name="Log in")).to_be_visible()
    expect(bob.locator("#conversation-list li.conversation")).to_have_count(0)


def test_model_output_is_sanitized(page, signup, shot):
    signup(page)
    payload = (
        '<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> '
        "![cat](http://127.0.0.1:9/cat.png) [a link](https://example.com/) "
        '<a href="javascript:window.__xss=3">js</a>'
    )
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    send(page, payload)
    answer = page.locator(ANSWERS).last
    expect(answer).to_have_attribute("data-state", "done")

    def check():
        assert page.evaluate("window.__xss") is None
        md = page.locator(ANSWERS).last.locator(".md")
        assert md.locator("img, script, iframe").count() == 0
        assert page.locator(".msg.user img, .msg.user script").count() == 0
        text = md.inner_text()
        assert '<img src=x onerror="window.__xss=1">' in text  # raw HTML is shown as text
        assert "<script>window.__xss=2</script>" in text
        assert "[image: cat]" in text  # images are never loaded
        link = md.locator("a", has_text="a link")
        assert link.get_attribute("target") == "_blank"
        assert link.get_attribute("rel") == "noopener noreferrer"
        for anchor in md.locator("a").all():
            assert not (anchor.get_attribute("href") or "").startswith("javascript:")
        expect(page.locator(".msg.user .bubble").last).to_have_text(payload)

    check()
    page.reload()  # the saved answer goes through the same renderer
    wait_ready(page)
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "done")
    check()
    assert not any("cat.png" in url or url.endswith("/x") for url in requests)
    shot(page, "sanitized-output")


def test_failed_answer_says_so_and_can_be_retried(page, shot):
    page.goto("/")
    wait_ready(page)
    send(page, "please fail [[fake:error]] now")
    answer = page.locator(ANSWERS).last
    expect(answer).to_have_attribute("data-state", "error")
    expect(answer.locator(".notice")).to_contain_text("failed")
    expect(answer.get_by_role("button", name="Retry this question")).to_be_visible()
    expect(page.locator("#send")).to_be_visible()
    shot(page, "failed")


def test_place_in_line_while_the_model_is_busy(page, chat_server, shot):
    page.goto("/")
    wait_ready(page)
    # Another client keeps the model (one sequence per batch) busy for a few seconds.
    busy = threading.Event()

    def occupy():
        with httpx.stream("POST", f"{chat_server.url}/stream", json={"query": LONG}, timeout=60) as response:
            for _ in response.iter_lines():
                busy.set()

    thread = threading.Thread(target=occupy, daemon=True)
    thread.start()
    assert busy.wait(10)
    send(page, "me next")
    expect(page.locator(ANSWERS).last.locator(".status")).to_have_text(re.compile(r"Waiting… \d+(st|nd|rd|th) in line"))
    shot(page, "queued")
    expect_done(page, "You said: me next", timeout=60_000)
    thread.join(60)


def test_settings_are_saved_and_sent(page, signup):
    signup(page)
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    page.reload()
    wait_ready(page)
    send(page, "hello")
    expect_done(page, "You said: hello")

    page.click("#open-settings")
    dialog = page.locator("#settings")
    expect(dialog).to_be_visible()
    page.fill("#system-prompt", "Answer like a pirate.")
    page.locator("#temperature").fill("0.3")
    page.fill("#max-length", "2048")
    page.click("#settings-save")
    expect(dialog).to_be_hidden()

    conversation_id = page.url.split("#")[1]
    saved = page.request.get(f"/api/conversations/{conversation_id}").json()
    assert saved["system_prompt"] == "Answer like a pirate."
    assert saved["settings"] == {"temperature": 0.3, "max_length": 2048}

    send(page, "again")
    expect_done(page, "You said: again")
    chat = [json.loads(frame) for frame in sent if '"chat"' in frame][-1]
    assert chat["params"] == {"temperature": 0.3, "max_length": 2048}

    page.reload()
    wait_ready(page)
    page.click("#open-settings")
    expect(page.locator("#system-prompt")).to_have_value("Answer like a pirate.")
    expect(page.locator("#temperature-out")).to_have_text("0.30")
    expect(page.locator("#top-p-out")).to_have_text("default")
    expect(page.locator("#max-length")).to_have_value("2048")
    export = page.locator("#export-md").get_attribute("href")
    assert export == f"/api/conversations/{conversation_id}/export?format=md"
    assert "You said: again" in page.request.get(export).text()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def test_autoscroll_pauses_when_the_user_scrolls_up(browser_context):
    page = browser_context(viewport={"width": 800, "height": 500}).new_page()
    page.goto("/")
    wait_ready(page)
    long_lines = "\n\n".join(f"paragraph {i} " + "text " * 12 for i in range(40))
    send(page, long_lines)
    page.wait_for_function("() => document.querySelector('.msg.assistant .md')?.textContent.length > 300")
    scroller = "document.getElementById('scroller')"
    distance = f"{scroller}.scrollHeight - {scroller}.scrollTop - {scroller}.clientHeight"
    assert page.evaluate(distance) < 60  # following the answer
    page.mouse.move(400, 250)
    page.mouse.wheel(0, -600)
    page.wait_for_timeout(300)
    expect(page.locator("#jump")).to_be_visible()
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "done", timeout=60_000)
    assert page.evaluate(distance) > 200  # it stayed where the user put it
    page.click("#jump")
    assert page.evaluate(distance) < 60


def test_keyboard_only_use(page, signup):
    signup(page)
    expect(page.locator("#prompt")).to_be_focused()
    page.keyboard.type("typed with the keyboard")
    page.keyboard.press("Enter")
    expect_done(page, "You said: typed with the keyboard")

    # Every button has an accessible name.
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('button')].filter(b => b.offsetParent !== null
              && !(b.getAttribute('aria-label') || b.textContent.trim())).map(b => b.outerHTML)"""
    )
    assert unnamed == []

    # Tab reaches the settings button; its focus ring is visible; Enter opens the dialog.
    page.locator("#new-chat-top").focus()
    page.keyboard.press("Tab")
    expect(page.locator("#open-settings")).to_be_focused()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", "")
    page.keyboard.press("Enter")
    expect(page.locator("#settings")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#open-settings")).to_be_focused()


def test_phone_size_sidebar_folds_away(browser_context, signup, shot):
    context = browser_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                              device_scale_factor=2)
    page = context.new_page()
    signup(page, "phone")
    send(page, "Hello from a phone. Show me `code`:\n```js\nconsole.log('hi')\n```")
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "done")

    sidebar = page.locator("#sidebar")
    toggle = page.locator("#toggle-sidebar")
    expect(toggle).to_be_visible()
    expect(sidebar).not_to_be_in_viewport()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    shot(page, "phone-light")

    toggle.click()
    expect(sidebar).to_be_in_viewport()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    page.wait_for_timeout(300)  # the slide-in transition
    shot(page, "phone-sidebar-light")
    page.locator("#conversation-list a").first.click()
    expect(sidebar).not_to_be_in_viewport()

    page.emulate_media(color_scheme="dark")
    shot(page, "phone-dark")
    toggle.click()
    page.wait_for_timeout(300)
    shot(page, "phone-sidebar-dark")
    page.keyboard.press("Escape")
    expect(sidebar).not_to_be_in_viewport()


def test_dark_theme_follows_the_system(browser_context, signup, shot):
    context = browser_context(color_scheme="dark")
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    signup(page, "dark")
    send(page, "Dark mode, with a table:\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\ndef f(x):\n    return x * 2\n```")
    expect(page.locator(ANSWERS).last).to_have_attribute("data-state", "done")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(33, 33, 33)"
    shot(page, "desktop-dark")
    # Code blocks have a copy button.
    copy = page.get_by_role("button", name="Copy code")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "def f(x):\n    return x * 2"
    page.click("#open-settings")
    shot(page, "settings-dark")
    page.keyboard.press("Escape")

    page.emulate_media(color_scheme="light")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"
    page.click("#open-settings")
    shot(page, "settings-light")


def test_account_pages_are_styled(page, shot):
    page.goto("/accounts/login/")
    card = page.locator("main.auth-card")
    expect(card).to_be_visible()
    assert page.evaluate("getComputedStyle(document.querySelector('main.auth-card')).borderRadius") == "16px"
    shot(page, "login-light")
    page.emulate_media(color_scheme="dark")
    page.goto("/accounts/signup/")
    shot(page, "signup-dark", full_page=True)


def test_an_open_conversation_updates_live_in_every_tab(browser_context, signup, shot):
    context = browser_context()  # one browser: both tabs share the session
    tab_a = context.new_page()
    signup(tab_a, "tabs")
    send(tab_a, "shared topic")
    expect_done(tab_a, "You said: shared topic")
    shared_url = tab_a.url
    tab_a.click("#new-chat")
    send(tab_a, "other topic")
    expect_done(tab_a, "You said: other topic")
    tab_a.locator("#conversation-list a", has_text="shared topic").click()
    expect(tab_a.locator(".msg.user")).to_have_count(1)

    # Tab B opens the same conversation; it is idle, and its socket follows the conversation.
    tab_b = context.new_page()
    received = []
    tab_b.on("websocket", lambda ws: ws.on("framereceived", lambda payload: received.append(json.loads(payload))))
    tab_b.goto(shared_url)
    wait_ready(tab_b)
    conversation_id = shared_url.split("#")[1]

    def subscribed() -> int:
        return sum(1 for f in received if f["type"] == "subscribed" and f["conversation_id"] == conversation_id)

    def wait_until(check, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "timed out"
            tab_b.wait_for_timeout(50)

    wait_until(lambda: subscribed() >= 1)
    expect(tab_b.locator(".msg.user")).to_have_count(1)
    expect_titles(tab_b, ["other topic", "shared topic"])

    # Asked in tab A: tab B shows the question, then the answer as it is generated.
    send(tab_a, LONG)
    expect(tab_b.locator(".msg.user .bubble").last).to_have_text(LONG)
    answer = tab_b.locator(ANSWERS).last
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(answer.locator(".md")).to_have_text(re.compile(r"^You said: word0"))
    partial = answer_text(tab_b)
    expect(tab_b.locator("#stop")).to_be_visible()
    shot(tab_b, "other-tab-streaming")
    expect_done(tab_b, f"You said: {LONG}")
    assert len(partial) < len(f"You said: {LONG}"), "the answer appeared in tab B while it was generated"
    expect(answer.locator(".stats")).to_have_text(re.compile(r"tokens/s"))
    expect(tab_b.locator("#stop")).to_be_hidden()
    expect_titles(tab_b, ["shared topic", "other topic"])  # the sidebar follows too
    expect_done(tab_a, f"You said: {LONG}")
    expect(tab_a.locator(".msg.user")).to_have_count(2)  # its own answer, shown once
    expect(tab_a.locator(ANSWERS)).to_have_count(2)
    shot(tab_b, "other-tab-done")

    # After a lost connection, tab B follows the conversation again.
    before = subscribed()
    tab_b.evaluate("window.chatApp.socket.ws.close()")
    wait_until(lambda: subscribed() > before)
    send(tab_a, "after the reconnect")
    expect_done(tab_b, "You said: after the reconnect")
    expect(tab_b.locator(".msg.user")).to_have_count(3)

    # And the other way round: asked in tab B, shown in tab A; tab B shows its answer once.
    expect_done(tab_a, "You said: after the reconnect")
    send(tab_b, "asked in **tab B**")
    expect_done(tab_a, "You said: asked in tab B")
    expect(tab_a.locator(ANSWERS).last.locator(".md strong")).to_have_text("tab B")
    expect_done(tab_b, "You said: asked in tab B")
    for tab in (tab_a, tab_b):
        expect(tab.locator(".msg.user")).to_have_count(4)
        expect(tab.locator(ANSWERS)).to_have_count(4)
    shot(tab_a, "other-tab-asked-in-b")
