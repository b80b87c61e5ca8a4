"""`manage.py serve` with no model flag: the embedded SmolLM2 GGUF served by llama.cpp, as is
(no dequantization, no cache written), through /stream, the OpenAI API with the official
client, and the WebSocket."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
import websockets

from tests.views.sse_client import parse

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France?"


@pytest.fixture
def server(server_factory, tmp_path):
    return server_factory.start(model="", env={"CHATGLM_CACHE_DIR": str(tmp_path / "models")})


def test_the_default_model_is_served_by_llamacpp_as_is(server, tmp_path):
    health = httpx.get(f"{server.url}/healthz").json()
    assert (health["model"], health["backend"], health["device"]) == ("SmolLM2-135M-Instruct", "llamacpp", "cpu")
    assert "backend llamacpp (auto: a GGUF file)" in server.log and "backend llamacpp" in server.log
    assert not (tmp_path / "models").exists()  # nothing dequantized or converted

    with httpx.stream("POST", f"{server.url}/stream", json={"query": QUESTION, "max_new_tokens": 40}, timeout=120) as r:
        events = [data for name, data in parse("".join(r.iter_text())) if name == "delta"]
    final = events[-1]
    assert final["finished"] is True and "Paris" in final["response"]
    assert "".join(e["delta"] for e in events) == final["response"]
    assert final["usage"]["completion_tokens"] > 0 and final["usage"]["prompt_tokens"] > 0

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    [model] = client.models.list().data
    assert model.id == "SmolLM2-135M-Instruct"
    messages = [{"role": "user", "content": QUESTION}]
    chunks = list(client.chat.completions.create(model=model.id, messages=messages, max_tokens=40, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == final["response"]  # greedy by default: the same answer on every protocol
    assert chunks[-1].usage.completion_tokens == final["usage"]["completion_tokens"]

    frames = asyncio.run(websocket_turn(server, QUESTION))
    assert frames[-1]["type"] == "done" and frames[-1]["response"] == final["response"]
    assert "".join(f["delta"] for f in frames if f["type"] == "delta") == final["response"]


def test_whole_characters_on_every_protocol(server):
    query = "Translate to Chinese: good morning 🌞"
    with httpx.stream("POST", f"{server.url}/stream", json={"query": query, "max_new_tokens": 32}, timeout=120) as r:
        events = [data for name, data in parse("".join(r.iter_text())) if name == "delta"]
    answer = events[-1]["response"]
    assert any(ord(c) > 0x2E80 for c in answer) and "\ufffd" not in answer
    assert all("\ufffd" not in e["delta"] for e in events)
    body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": query}], "max_tokens": 32, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert "".join(deltas) == answer and all("\ufffd" not in d for d in deltas)


async def websocket_turn(server, query: str) -> list[dict]:
    async with websockets.connect(f"{server.ws_url}/ws/chat/", origin=server.url) as ws:
        await ws.send(json.dumps({"type": "chat", "query": query, "params": {"max_new_tokens": 40}, "request_id": "r1"}))
        frames = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
        return frames
