"""Each ChatGLM fixture checkpoint served with `serve --model <dir>` and no other flag (the native
backend), and ChatGLM2/3 also with `--backend llamacpp` (converted to GGUF once, then served by
llama.cpp), through /stream, /v1/chat/completions and the WebSocket: the reference's answers,
in whole characters."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from tests.engine.chatglm_fixtures import FAMILIES, checkpoint, expected_response, golden, require_fixtures
from tests.views.sse_client import parse

pytestmark = pytest.mark.slow
GREEDY = {"temperature": 0, "max_new_tokens": 32}


def pick_cases(family: str) -> list[dict]:
    """One case with history and one that stops on EOS (they exercise prompt and stop rules)."""
    cases = golden(family)["cases"]
    with_history = next(c for c in cases if c["history"])
    eos = next(c for c in cases if c["stopped_by"] == "eos")
    return [with_history, eos]


SERVED = [(family, "chatglm") for family in FAMILIES] + [("v2", "llamacpp"), ("v3", "llamacpp")]


@pytest.mark.parametrize(("family", "backend"), SERVED)
def test_fixture_served_by_every_protocol(family, backend, server_factory, tmp_path):
    require_fixtures()
    args = ("--backend", "llamacpp") if backend == "llamacpp" else ()
    # A cache of the test's own: the conversion runs here, from the unchanged checkpoint.
    server = server_factory.start(model=str(checkpoint(family)), args=args,
                                  env={"CHATGLM_CACHE_DIR": str(tmp_path / "models"), "CHATGLM_MAX_BATCH": "2"})
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["backend"] == backend and health["model"] == checkpoint(family).name

    for case in pick_cases(family):
        expected = expected_response(case)
        history = [list(pair) for pair in case["history"]]

        with httpx.stream("POST", f"{server.url}/stream", json={"query": case["query"], "history": history, **GREEDY},
                          timeout=60) as r:
            events = [d for name, d in parse("".join(r.iter_text())) if name == "delta"]
        assert events[-1]["response"] == expected
        assert "".join(e["delta"] for e in events) == expected
        assert events[-1]["finish_reason"] == ("stop" if case["stopped_by"] == "eos" else "length")

        messages = []
        for user, assistant in case["history"]:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": case["query"]})
        body = {"model": health["model"], "messages": messages, "temperature": 0, "max_tokens": 32}
        completion = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()
        assert completion["choices"][0]["message"]["content"] == expected

        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert streamed == expected

    ws_case = pick_cases(family)[1]
    frames = asyncio.run(websocket_turn(server, ws_case["query"]))
    assert frames[-1]["type"] == "done" and frames[-1]["response"] == expected_response(ws_case)
    assert "".join(f["delta"] for f in frames if f["type"] == "delta") == frames[-1]["response"]


async def websocket_turn(server, query: str) -> list[dict]:
    async with websockets.connect(f"{server.ws_url}/ws/chat/", origin=server.url) as ws:
        await ws.send(json.dumps({"type": "chat", "query": query, "params": GREEDY, "request_id": "r1"}))
        frames = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        return frames
