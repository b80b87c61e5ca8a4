"""Ask the model one question over each protocol and read the outcome the same way for all."""

from __future__ import annotations

import dataclasses
import json

from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from chatglm_site.asgi import application
from tests.views.sse_client import parse, read_stream

from .conftest import SITE

PROTOCOLS = ("chat", "stream", "openai", "openai-stream", "ws")


@dataclasses.dataclass
class Outcome:
    status: int | None  # HTTP status (200 for a stream that opened); None on a WebSocket
    error: dict | None  # the error object, if the answer failed
    text: str  # the answer text the client received
    raw: str  # everything the client received, to look for leaks
    done: bool  # whether the client was told the answer completed


async def ask(protocol: str, query: str, model: str = "fake", timeout: float = 30) -> Outcome:
    client = AsyncClient()
    if protocol in ("chat", "stream"):
        r = await client.post(f"/{protocol}", {"query": query}, content_type="application/json")
        if protocol == "chat" or not r["Content-Type"].startswith("text/event-stream"):
            body = r.json()
            return Outcome(r.status_code, body.get("error"), body.get("response", ""), r.content.decode(),
                           bool(body.get("success")))
        raw = await read_stream(r)
        events = parse(raw)
        text = "".join(data["delta"] for name, data in events if name == "delta")
        errors = [data["error"] for name, data in events if name == "error"]
        done = any(name == "delta" and data.get("finished") for name, data in events)
        return Outcome(r.status_code, errors[-1] if errors else None, text, raw, done)
    if protocol.startswith("openai"):
        stream = protocol == "openai-stream"
        body = {"model": model, "messages": [{"role": "user", "content": query}], "stream": stream}
        r = await client.post("/v1/chat/completions", body, content_type="application/json")
        if not stream or not r["Content-Type"].startswith("text/event-stream"):
            data = r.json()
            text = data["choices"][0]["message"]["content"] if "choices" in data else ""
            return Outcome(r.status_code, data.get("error"), text, r.content.decode(), "choices" in data)
        raw = await read_stream(r)
        items = [data for name, data in parse(raw) if name != "comment"]
        text = "".join((c.get("delta") or {}).get("content") or "" for item in items if isinstance(item, dict)
                       for c in item.get("choices", []))
        errors = [item["error"] for item in items if isinstance(item, dict) and "error" in item]
        return Outcome(r.status_code, errors[-1] if errors else None, text, raw, "[DONE]" in items)
    socket = WebsocketCommunicator(application, "/ws/chat/", headers=list(SITE))
    connected, _ = await socket.connect()
    assert connected
    frames = []
    try:
        await socket.send_json_to({"type": "chat", "query": query, "request_id": "q1"})
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(await socket.receive_json_from(timeout=timeout))
    finally:
        await socket.disconnect()
    last = frames[-1]
    text = "".join(f["delta"] for f in frames if f["type"] == "delta")
    return Outcome(None, last.get("error"), text, json.dumps(frames, ensure_ascii=False), last["type"] == "done")
