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
