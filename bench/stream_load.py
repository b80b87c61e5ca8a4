"""A load generator for many concurrent streams: the gaps between the deltas each client sees.

The clients run in worker processes of their own (never in the server's process, nor all in
one process), each an asyncio loop of httpx (SSE, `/stream`) or websockets (`/ws/chat/`)
clients. A stream's gaps are the times between consecutive delta events as they reach its
client (the first delta, which waits for the prompt, is not a gap). Used by
bench_serving.py; runnable alone against a server that is already up:

    .venv/bin/python bench/stream_load.py http://127.0.0.1:8800 --streams 200 --tokens 100
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import time

QUERY = "measure the gaps between the deltas of many streams " * 12  # longer than any answer here


async def _sse_stream(client, url: str, index: int, tokens: int, arrivals: list[float]) -> dict:
    body = {"query": f"{index} {QUERY}", "max_new_tokens": tokens, "temperature": 0}
    buffer, done = b"", False
    async with client.stream("POST", f"{url}/stream", json=body, timeout=120) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}"}
        async for chunk in r.aiter_bytes():
            now = time.perf_counter()
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if event.startswith(b"event: delta"):
                    if b'"finished":true' in event:
                        done = True
                    else:
                        arrivals.append(now)
                elif event.startswith(b"event: error"):
                    return {"error": event.decode(errors="replace")[:200]}
    return {"arrivals": arrivals} if done else {"error": "stream ended before its last event"}


async def _ws_stream(url: str, index: int, tokens: int, arrivals: list[float]) -> dict:
    import websockets

    ws_url = url.replace("http://", "ws://") + "/ws/chat/"
    async with websockets.connect(ws_url, origin=url, max_queue=None) as socket:
        await socket.send(json.dumps({"type": "chat", "query": f"{index} {QUERY}", "request_id": index,
                                      "params": {"max_new_tokens": tokens, "temperature": 0}}))
        async for frame in socket:
            now = time.perf_counter()
            kind = json.loads(frame)["type"]
            if kind == "delta":
                arrivals.append(now)
            elif kind == "done":
                return {"arrivals": arrivals}
            elif kind == "error":
                return {"error": frame[:200]}
    return {"error": "socket closed before done"}


async def _worker(url: str, protocol: str, first: int, count: int, tokens: int, start_at: float) -> list[dict]:
    import httpx

    await asyncio.sleep(max(0.0, start_at - time.time()))
    limits = httpx.Limits(max_connections=count + 4, max_keepalive_connections=count + 4)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120)) as client:

        async def one(index: int) -> dict:
            arrivals: list[float] = []
            try:
                if protocol == "ws":
                    return await _ws_stream(url, index, tokens, arrivals)
                return await _sse_stream(client, url, index, tokens, arrivals)
            except Exception as exc:  # noqa: BLE001 - counted as an error of this stream
                cause = exc.__cause__ or exc.__context__
                return {"error": f"{type(exc).__name__}: {exc} ({cause!r}) after {len(arrivals)} deltas"[:300]}

        return await asyncio.gather(*(one(first + i) for i in range(count)))


def worker(url: str, protocol: str, first: int, count: int, tokens: int, start_at: float) -> list[dict]:
    """One load process: `count` concurrent streams; per stream its delta arrival times (or an error)."""
    return asyncio.run(_worker(url, protocol, first, count, tokens, start_at))


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run_load(url: str, streams: int, tokens: int, protocol: str = "sse", processes: int = 4) -> dict:
    """`streams` concurrent streams from `processes` worker processes; the gap statistics."""
    processes = max(1, min(processes, streams))
    shares = [streams // processes + (1 if i < streams % processes else 0) for i in range(processes)]
    start_at = time.time() + 2.0  # every worker has imported httpx by then: they start together
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures, first = [], 0
        for share in shares:
            futures.append(pool.submit(worker, url, protocol, first, share, tokens, start_at))
            first += share
        results = [stream for future in futures for stream in future.result()]
    gaps, events, errors = [], 0, [r["error"] for r in results if "error" in r]
    for r in results:
        arrivals = r.get("arrivals", [])
        events += len(arrivals)
        gaps += [b - a for a, b in zip(arrivals, arrivals[1:])]
    gaps.sort()
    return {
        "protocol": protocol,
        "streams": streams,
        "tokens_per_stream": tokens,
        "delta_events": events,
        "p50_gap_ms": round(percentile(gaps, 0.50) * 1000, 1),
        "p99_gap_ms": round(percentile(gaps, 0.99) * 1000, 1),
        "max_gap_ms": round(gaps[-1] * 1000, 1) if gaps else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--protocol", choices=("sse", "ws"), default="sse")
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(run_load(args.url, args.streams, args.tokens, args.protocol, args.processes)))
