"""GET /metrics on a real server after traffic on every protocol, read with the Prometheus
client's own parser; the access log's request id; /metrics behind API keys."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families


def scrape(server, headers=None) -> dict:
    """{(sample name, frozenset(labels)): value} from the server's /metrics."""
    response = httpx.get(f"{server.url}/metrics", headers=headers or {}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def websocket_turn(server, query: str) -> list[dict]:
    async with websockets.connect(f"{server.ws_url}/ws/chat/", origin=server.url) as ws:
        await ws.send(json.dumps({"type": "chat", "query": query, "request_id": "r1"}))
        frames = []
        while True:
            frame = json.loads(await ws.recv())
            frames.append(frame)
            if frame["type"] in ("done", "error"):
                return frames


def test_metrics_count_requests_turns_tokens_and_latencies(server_factory):
    server = server_factory.start(env={"CHATGLM_FAKE_DELAY_MS": "5"})
    before = scrape(server)
    assert value(before, "chatglm_turns_total", source="api", finish_reason="stop") == 0

    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(2):
            assert client.post("/chat", json={"query": "one two three"}).status_code == 200
        with client.stream("POST", "/stream", json={"query": "four five"}) as response:
            assert response.status_code == 200
            response.read()
        assert client.post("/v1/chat/completions", json={
            "model": "fake", "messages": [{"role": "user", "content": "six seven"}]}).status_code == 200
        assert client.post("/chat", json={"query": ""}).status_code == 400
        assert client.post("/v1/chat/completions", json={"messages": "nope"}).status_code == 400
    frames = asyncio.run(websocket_turn(server, "eight nine"))
    assert frames[-1]["type"] == "done"

    samples = scrape(server)
    assert value(samples, "chatglm_requests_total", protocol="seed", status="200") == 3
    assert value(samples, "chatglm_requests_total", protocol="seed", status="400") == 1
    assert value(samples, "chatglm_requests_total", protocol="openai", status="200") == 1
    assert value(samples, "chatglm_requests_total", protocol="openai", status="400") == 1
    assert value(samples, "chatglm_errors_total", protocol="seed", code="400") == 1
    assert value(samples, "chatglm_errors_total", protocol="openai", code="400") == 1
    assert value(samples, "chatglm_turns_total", source="api", finish_reason="stop") == 3
    assert sum(v for (name, labels), v in samples.items() if name == "chatglm_turns_total") == 5
    # The fake model answers "You said: <query>", one token per word.
    tokens = sum(v for (name, labels), v in samples.items() if name == "chatglm_generated_tokens_total")
    assert tokens >= 5 * 3
    assert value(samples, "chatglm_time_to_first_token_seconds_count") == 5
    assert value(samples, "chatglm_inter_token_latency_seconds_count") > 0
    assert value(samples, "chatglm_inter_token_latency_seconds_sum") > 0
    assert ("chatglm_queue_length", frozenset()) in samples
    assert value(samples, "chatglm_running_sequences") == 0

    # One request id follows a turn: the access line and the turn's end line carry the same one.
    response = httpx.post(f"{server.url}/chat", json={"query": "traced"}, headers={"X-Request-ID": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    for _ in range(50):  # the access line is written once the response has gone out
        log = server.log
        access = [json.loads(line[line.index("{"):]) for line in log.splitlines() if "chat.access" in line and "trace-42" in line]
        if access:
            break
        time.sleep(0.1)
    assert access and access[0]["path"] == "/chat" and access[0]["status"] == 200 and access[0]["protocol"] == "seed"
    assert re.search(r"chat\.turns \[trace-42\]: turn \w+ ended: stop", log), log[-3000:]
    # A made-up id with odd characters is replaced by a fresh one, not logged as given.
    response = httpx.post(f"{server.url}/chat", json={"query": "x"}, headers={"X-Request-ID": "a b\"}"})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_cancellations_counted(server_factory):
    server = server_factory.start(env={"CHATGLM_FAKE_DELAY_MS": "200"})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", "/stream", json={"query": " ".join(["word"] * 50)}) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    break  # disconnect mid-answer
    for _ in range(100):
        samples = scrape(server)
        if value(samples, "chatglm_cancellations_total", source="api"):
            break
        time.sleep(0.1)
    assert value(samples, "chatglm_cancellations_total", source="api") == 1
    assert value(samples, "chatglm_turns_total", source="api", finish_reason="cancelled") == 1


@pytest.mark.parametrize("authorization, status", [(None, 401), ("Bearer wrong", 401), ("Bearer s3cret", 200)])
def test_metrics_protected_like_the_api(server_factory, authorization, status):
    server = server_factory.start(env={"CHATGLM_API_KEYS": "ops:s3cret"})
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.get(f"{server.url}/metrics", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert "chatglm_" not in response.text
