import pytest

from tests.views.sse_client import parse, read_stream

pytestmark = pytest.mark.django_db(transaction=True)


async def test_chat_answers(engine, async_client):
    r = await async_client.post("/chat", {"query": "你好🙂", "history": []}, content_type="application/json")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["response"] == "You said: 你好🙂"
    assert body["history"] == [["你好🙂", "You said: 你好🙂"]]
    assert body["success"] is True


async def test_stream(engine, async_client):
    r = await async_client.post("/stream", {"query": "你好🙂"}, content_type="application/json")
    assert r["Content-Type"].startswith("text/event-stream")
    events = parse(await read_stream(r))
    deltas = [d for name, d in events if name == "delta"]
    assert deltas[-1]["finished"] is True
    assert "".join(d["delta"] for d in deltas) == "You said: 你好🙂" == deltas[-1]["response"]
    assert all("\ufffd" not in d["delta"] for d in deltas)



async def test_client_gone_before_the_body_starts_cancels_the_turn(engine_env):
    """Through Django's real ASGI handler: the client disconnects while the headers are being
    sent, so the stream body never starts and its `finally` never runs."""
    import asyncio
    import gc
    import json

    from django.core.asgi import get_asgi_application

    from chat.models import Message

    engine_env(CHATGLM_FAKE_DELAY_MS="20")
    body = json.dumps({"query": "a long enough question " * 5}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    headers_sent = asyncio.Event()

    async def receive():
        if messages:
            return messages.pop(0)
        await headers_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            headers_sent.set()
            await asyncio.sleep(3600)  # a client that never reads

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/stream", "raw_path": b"/stream", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"localhost"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8800),
    }
    await get_asgi_application()(scope, receive, send)
    gc.collect()
    for _ in range(100):
        message = await Message.objects.filter(role="assistant").alast()
        if message.finish_reason:
            break
        await asyncio.sleep(0.05)
    assert message.finish_reason == "cancelled"
