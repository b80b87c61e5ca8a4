"""The ASGI middleware alone (any ASGI server): bodies over the limit are refused with 413
before the application buffers them."""

from __future__ import annotations

import json

from chat.asgi_limits import ResourceLimits


class Recorder:
    """An application that reads the whole body, as Django does, then answers 200."""

    def __init__(self):
        self.called = False
        self.received = []

    async def __call__(self, scope, receive, send):
        self.called = True
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        if message["type"] == "http.request":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


async def call(app, headers, chunks):
    sent = []
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    served = []

    async def receive():
        served.append(1)
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/chat", "headers": headers, "client": ("203.0.113.1", 5)}
    await ResourceLimits(app)(scope, receive, send)
    return sent, len(served)


async def test_a_declared_length_over_the_limit_never_reaches_the_application(settings):
    settings.MAX_BODY_BYTES = 1000
    app = Recorder()
    sent, reads = await call(app, [(b"content-length", b"5000")], [b"x" * 5000])
    assert not app.called and reads == 0
    assert sent[0]["status"] == 413 and json.loads(sent[1]["body"])["error"]["code"] == "too_large"


async def test_a_streamed_body_is_cut_off_once_past_the_limit(settings):
    settings.MAX_BODY_BYTES = 1000
    app = Recorder()
    sent, reads = await call(app, [], [b"x" * 400] * 10)
    assert reads == 3  # the third chunk passed the limit: the other seven were never read
    assert app.received[-1] == {"type": "http.disconnect"}
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [413]  # the app's 200 never went out


async def test_a_body_within_the_limit_passes(settings):
    settings.MAX_BODY_BYTES = 1000
    app = Recorder()
    sent, _ = await call(app, [(b"content-length", b"800")], [b"x" * 400, b"x" * 400])
    assert sent[0]["status"] == 200 and sum(len(m["body"]) for m in app.received) == 800
