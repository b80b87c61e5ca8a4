"""The `openai` backend in front of llama.cpp's own HTTP server (xllamacpp, the embedded GGUF):
model list and context read at start-up, answers passed through unchanged on every protocol,
a client's disconnect stopping llama.cpp's generation, /healthz on the upstream's reachability."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
import websockets

from tests.deploy.llamacpp import LlamaServer

pytestmark = pytest.mark.slow

GREEDY = {"temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    server = LlamaServer(tmp_path_factory.mktemp("llama") / "llama.log")
    yield server
    server.stop()


@pytest.fixture
def site(server_factory, llama):
    return server_factory.start(model="", args=("--upstream-url", f"{llama.url}/v1"))


def test_model_and_context_read_at_start_and_health_says_reachable(site):
    health = httpx.get(f"{site.url}/healthz").json()
    assert health["status"] == "ok"
    assert health["backend"] == "openai"
    assert health["model"] == "SmolLM2-135M-Instruct.Q4_1"  # llama.cpp's /v1/models, not a guess
    assert health["context_length"] == 8192  # llama.cpp's meta.n_ctx for one slot
    assert health["upstream"] == {"reachable": True}
    models = httpx.get(f"{site.url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["SmolLM2-135M-Instruct.Q4_1"]


def test_answers_pass_through_unchanged_on_every_protocol(site, llama):
    messages = [{"role": "user", "content": "Name three colours."}]
    direct = httpx.post(f"{llama.url}/v1/chat/completions", timeout=120,
                        json={"messages": messages, "max_tokens": 24, **GREEDY}).json()
    expected = direct["choices"][0]["message"]["content"]
    assert expected

    client = openai.OpenAI(base_url=f"{site.url}/v1", api_key="unused")
    whole = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=messages, max_tokens=24, **GREEDY)
    assert whole.choices[0].message.content == expected
    assert whole.usage.completion_tokens == direct["usage"]["completion_tokens"]  # llama.cpp's count
    assert whole.usage.prompt_tokens == direct["usage"]["prompt_tokens"]

    stream = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=messages, max_tokens=24,
                                            stream=True, **GREEDY)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected

    deltas, last = [], None
    with httpx.stream("POST", f"{site.url}/stream", timeout=120,
                      json={"query": "Name three colours.", "max_new_tokens": 24, **GREEDY}) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                data = json.loads(line[5:])
                if data["finished"]:
                    last = data
                else:
                    deltas.append(data["delta"])
    assert "".join(deltas) == last["response"] == expected

    async def over_websocket():
        async with websockets.connect(f"{site.ws_url}/ws/chat/", origin=site.url) as ws:
            await ws.send(json.dumps({"type": "chat", "query": "Name three colours.", "request_id": "a",
                                      "params": {"max_new_tokens": 24, **GREEDY}}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if frame["type"] in ("done", "error"):
                    return frame

    assert asyncio.run(over_websocket())["response"] == expected


def test_a_disconnect_stops_llamacpp_generating(site, llama):
    with httpx.stream("POST", f"{site.url}/stream", timeout=120, json={
        "query": "Write a very long story about a lighthouse keeper.", "max_new_tokens": 4000,
        "temperature": 1.0, "seed": 3,
    }) as response:
        lines = response.iter_lines()  # kept open (closing the generator closes the connection)
        while not next(lines).startswith("data:"):
            pass
        assert llama.processing() == 1  # the answer is being generated upstream
        response.close()  # the client goes away mid-answer
    deadline = time.monotonic() + 10
    while llama.processing() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert llama.processing() == 0
    generated = llama.predicted()
    time.sleep(1)
    assert llama.predicted() == generated  # nothing more is generated for the closed stream


def test_health_says_when_the_upstream_is_gone(server_factory, tmp_path):
    upstream = LlamaServer(tmp_path / "own-llama.log", slots=1)
    try:
        site = server_factory.start(model="", args=("--upstream-url", f"{upstream.url}/v1"))
        assert httpx.get(f"{site.url}/healthz").json()["upstream"] == {"reachable": True}
    finally:
        upstream.stop()
    time.sleep(2.1)  # past the health check's cache
    health = httpx.get(f"{site.url}/healthz").json()
    assert health["upstream"] == {"reachable": False} and health["status"] == "degraded"
