"""Serving benchmark: real `manage.py serve` processes on 127.0.0.1, driven over /stream.

Side by side in one run:
  1. many concurrent SSE streams on the fake model (a fixed cost per decode step), with the
     engine batching up to 8 sequences per step against one at a time;
  2. the same on the embedded SmolLM2 (real decode steps), batch 4 against 1;
  3. how long after a client disconnects its generation stops (and the engine is idle);
  4. the serving tier under 200 streams of the fake model at 20 tokens/s each (50 ms steps):
     the gaps between deltas as each client sees them (p50/p99/max; the target is a p99 of
     at most 2x the step), errors, and the server process's CPU time, over SSE and WebSocket.
     The clients run in 4 processes of their own (bench/stream_load.py).

Prints the CPU (model, flags, cores), tables, and writes bench/results/serving.json.
Bounded: a few minutes in all; `--only gaps` runs part 4 alone (under a minute).
Usage: .venv/bin/python bench/bench_serving.py [--quick] [--only gaps]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_info, describe  # noqa: E402
from bench.stream_load import run_load  # noqa: E402
from tests.server import ServerFactory  # noqa: E402

RESULTS = ROOT / "bench" / "results"


async def one_stream(client: httpx.AsyncClient, url: str, query: str, max_new_tokens: int) -> dict:
    started = time.perf_counter()
    first = None
    events = 0
    body = {"query": query, "max_new_tokens": max_new_tokens, "temperature": 0}
    async with client.stream("POST", f"{url}/stream", json=body, timeout=600) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                events += 1
                if first is None:
                    first = time.perf_counter() - started
                if '"finished":true' in line:
                    usage = json.loads(line[5:])["usage"]
    return {"ttft": first, "total": time.perf_counter() - started, "events": events,
            "tokens": usage["completion_tokens"]}


async def load(url: str, streams: int, query: str, max_new_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        started = time.perf_counter()
        runs = await asyncio.gather(*(one_stream(client, url, f"{query} #{i}", max_new_tokens) for i in range(streams)))
        wall = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in runs)
    return {
        "streams": streams,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "events_per_s": round(sum(r["events"] for r in runs) / wall, 1),
        "ttft_median_s": round(statistics.median(r["ttft"] for r in runs), 3),
        "ttft_max_s": round(max(r["ttft"] for r in runs), 3),
    }


async def disconnect_latency(url: str, samples: int) -> list[float]:
    """Read a few events, drop the connection, and time until the engine runs nothing."""
    latencies = []
    async with httpx.AsyncClient() as client:
        for i in range(samples):
            async with client.stream("POST", f"{url}/stream", json={"query": f"stop me {i} " * 30}, timeout=60) as r:
                seen = 0
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        seen += 1
                        if seen == 5:
                            break
                closed = time.perf_counter()
            while (await client.get(f"{url}/healthz")).json()["running"]:
                await asyncio.sleep(0.002)
            latencies.append(time.perf_counter() - closed)
    return latencies


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gaps(factory: ServerFactory, streams: int, tokens: int) -> list[dict]:
    """Part 4: one fake-model server stepping every 50 ms with room for every stream in one
    batch; SSE then WebSocket clients, each `streams` at once."""
    server = factory.start(env={"CHATGLM_FAKE_DELAY_MS": "50", "CHATGLM_MAX_BATCH": str(streams),
                                "CHATGLM_MAX_QUEUE": str(streams)})
    rows = []
    try:
        for protocol in ("sse", "ws"):
            before = process_cpu_seconds(server.process.pid)
            started = time.perf_counter()
            row = run_load(server.url, streams, tokens, protocol, processes=4)
            row["wall_s"] = round(time.perf_counter() - started, 1)
            row["server_cpu_s"] = round(process_cpu_seconds(server.process.pid) - before, 2)
            rows.append(row)
    finally:
        server.stop()
    return rows


def table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n{title}")
    print("  ".join(f"{c:>14}" for c in columns))
    for row in rows:
        print("  ".join(f"{row.get(c, ''):>14}" for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer streams, for a smoke run")
    parser.add_argument("--only", choices=("gaps",), help="run one part alone")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cpu = cpu_info()
    print(describe(cpu))
    results: dict = {"machine": cpu, "fake": [], "smollm2": [], "disconnect": {}, "gaps": []}
    columns = ["batch", "streams", "wall_s", "tokens_per_s", "ttft_median_s", "ttft_max_s", "speedup"]
    with tempfile.TemporaryDirectory() as tmp:
        factory = ServerFactory(Path(tmp))
        try:
            if args.only != "gaps":
                run_batching(factory, args, results, columns)
            # 4. The serving tier itself: 200 streams at 20 tokens/s, gaps between deltas.
            results["gaps"] = gaps(factory, 200, 60 if args.quick else 100)
            table("Fake model, 200 streams at 20 tokens/s (50 ms steps): gaps between deltas per client",
                  results["gaps"], ["protocol", "streams", "delta_events", "p50_gap_ms", "p99_gap_ms",
                                    "max_gap_ms", "errors", "server_cpu_s", "wall_s"])
            errors = [r["first_error"] for r in results["gaps"] if r["errors"]]
            if errors:
                print("first error:", errors[0])
        finally:
            factory.stop_all()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "serving_gaps.json" if args.only == "gaps" else "serving.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {RESULTS / name}")


def run_batching(factory: ServerFactory, args, results: dict, columns: list[str]) -> None:
    """Parts 1 to 3."""
    # 1. The serving path itself: a fake model with 10 ms per decode step.
    counts = [1, 8, 32] if args.quick else [1, 8, 32, 64]
    for batch in (1, 8):
        server = factory.start(env={"CHATGLM_FAKE_DELAY_MS": "10", "CHATGLM_MAX_BATCH": str(batch),
                                    "CHATGLM_MAX_QUEUE": "256"})
        for streams in counts:
            row = asyncio.run(load(server.url, streams, "benchmark the serving path", 64))
            results["fake"].append({"batch": batch, **row})
        if batch == 8:
            lat = asyncio.run(disconnect_latency(server.url, 5 if args.quick else 10))
            results["disconnect"] = {
                "step_ms": 10, "samples": len(lat),
                "median_ms": round(statistics.median(lat) * 1000, 1), "max_ms": round(max(lat) * 1000, 1),
            }
        server.stop()
    add_speedups(results["fake"])
    table("Fake model, 10 ms per step, 64 tokens per stream (/stream over HTTP)", results["fake"], columns)
    d = results["disconnect"]
    print(f"\nDisconnect to engine idle (10 ms steps, {d['samples']} samples): "
          f"median {d['median_ms']} ms, max {d['max_ms']} ms")

    # 2. The embedded model, real decode steps.
    streams = 4
    for batch in (1, 4):
        server = factory.start(model="", env={"CHATGLM_MAX_BATCH": str(batch)})
        asyncio.run(load(server.url, 1, "warm up", 4))
        row = asyncio.run(load(server.url, streams, "Write a short poem about the sea.", 32 if args.quick else 48))
        results["smollm2"].append({"batch": batch, **row})
        server.stop()
    add_speedups(results["smollm2"])
    table(f"SmolLM2-135M on CPU, {streams} concurrent streams", results["smollm2"], columns)


def add_speedups(rows: list[dict]) -> None:
    """tokens/s of each batched row over the unbatched row with the same stream count."""
    base = {r["streams"]: r["tokens_per_s"] for r in rows if r["batch"] == 1}
    for row in rows:
        row["speedup"] = round(row["tokens_per_s"] / base[row["streams"]], 2) if row["streams"] in base else ""


if __name__ == "__main__":
    main()
