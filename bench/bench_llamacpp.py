"""This server (llamacpp backend) against llama.cpp's own HTTP server, on the same GGUF.

Side by side in one run, one server process at a time (never both at once):
  * the anchor: llama.cpp's server (xllamacpp listening on a loopback port, 8 slots of the
    model's whole context, its default thread count), driven over /v1/chat/completions;
  * this site: `manage.py serve` with no model flag (the embedded SmolLM2 via llama.cpp),
    driven over /stream (SSE), /v1/chat/completions (SSE) and the WebSocket.

Measured: first start (process start to ready: /health, /healthz) on an empty cache; tokens/s
per stream and aggregate with 1 and 8 concurrent clients (greedy, 128 new tokens, the same
sampling parameters on both) and the median time to first token; the follow-up turn's TTFT
after ~1,500 tokens of history, with prompt reuse (the previous turn just answered) and
without (a fresh conversation of the same length); and how long after a client disconnects
the server runs nothing. Prints the table with the CPU, writes bench/results/llamacpp.json.

Usage: .venv/bin/python bench/bench_llamacpp.py [--quick]   (about 3 minutes on 2 quiet cores)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_info, describe  # noqa: E402
from chat.engine.config import embedded_gguf  # noqa: E402
from tests.server import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MODEL = "SmolLM2-135M-Instruct"
NEW_TOKENS = 128
SLOTS = 8
# What this site sends llama.cpp for its default (greedy, repetition penalty 1.1, nothing else):
# the anchor gets the same, so both compute the same answers.
SAMPLING = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.1,
            "repeat_last_n": 8192, "samplers": ["penalties", "temperature", "top_k", "top_p"]}
TOPICS = ["a dragon who learns to cook", "a lighthouse keeper", "a robot gardener", "a lost violin",
          "a city under the sea", "a clockmaker's apprentice", "a journey across the desert", "a talking cat"]


# -- the anchor: llama.cpp's own server -------------------------------------------------------------


def anchor_main(port: int) -> None:
    """Child process: llama.cpp's HTTP server on 127.0.0.1:port until killed."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(embedded_gguf())
    params.n_parallel = SLOTS
    params.n_ctx = 8192 * SLOTS  # what llama-server -np 8 picks: each slot gets the whole context
    params.fit_params = False
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.endpoint_metrics = True
    params.verbosity = 0
    server = xllamacpp.Server(params)  # noqa: F841 - serves while this process lives
    print("listening", flush=True)
    while True:
        time.sleep(3600)


class Process:
    """A server process; `start_s` is the time from its start to its health check answering."""

    def __init__(self, args: list[str], health: str, env: dict, log: Path):
        self.log = log
        started = time.perf_counter()
        with open(log, "w") as out:
            self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = started + 300
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{log.read_text()}")
            try:
                if httpx.get(health, timeout=1).status_code == 200:
                    self.start_s = time.perf_counter() - started
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"server did not start:\n{log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- clients ---------------------------------------------------------------------------------------


def messages_for(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}]


async def openai_stream(client: httpx.AsyncClient, url: str, messages: list[dict], max_tokens: int, extra: dict) -> dict:
    body = {"model": MODEL, "messages": messages, "stream": True, "max_tokens": max_tokens,
            "stream_options": {"include_usage": True}, **extra}
    started = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                last = time.perf_counter()
                first = first or last
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"ttft": first - started, "first": first, "last": last, "end": time.perf_counter(), "tokens": tokens}


async def seed_stream(client: httpx.AsyncClient, url: str, messages: list[dict], max_tokens: int, extra: dict) -> dict:
    body = {"query": messages[-1]["content"], "max_new_tokens": max_tokens, "temperature": 0}
    started = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", f"{url}/stream", json=body, timeout=600) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = json.loads(line[5:])
            if data.get("delta"):
                last = time.perf_counter()
                first = first or last
            if data.get("finished"):
                tokens = data["usage"]["completion_tokens"]
    return {"ttft": first - started, "first": first, "last": last, "end": time.perf_counter(), "tokens": tokens}


async def websocket_stream(client, url: str, messages: list[dict], max_tokens: int, extra: dict) -> dict:
    ws_url = url.replace("http://", "ws://") + "/ws/chat/"
    async with websockets.connect(ws_url, origin=url, max_size=None) as ws:
        started = time.perf_counter()
        await ws.send(json.dumps({"type": "chat", "query": messages[-1]["content"], "request_id": "b",
                                  "params": {"max_new_tokens": max_tokens, "temperature": 0}}))
        first = last = None
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "delta" and frame.get("delta"):
                last = time.perf_counter()
                first = first or last
            if frame["type"] in ("done", "error"):
                assert frame["type"] == "done", frame
                return {"ttft": first - started, "first": first, "last": last, "end": time.perf_counter(),
                        "tokens": frame["usage"]["completion_tokens"]}


def fresh_connections(count: int) -> httpx.Limits:
    """A new connection per request, for both servers: llama.cpp's HTTP server closes idle
    keep-alive connections after 5 s, and a client reusing one just then sees a disconnect."""
    return httpx.Limits(max_connections=count, max_keepalive_connections=0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(client_fn, url: str, clients: int, extra: dict, pid: int) -> dict:
    async with httpx.AsyncClient(limits=fresh_connections(clients + 4)) as client:
        await client_fn(client, url, messages_for(99), 4, extra)  # warm the path
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        runs = await asyncio.gather(*(client_fn(client, url, messages_for(i), NEW_TOKENS, extra) for i in range(clients)))
        wall = time.perf_counter() - started
        cpu_used = cpu_seconds(pid) - cpu_before
    per_stream = [(r["tokens"] - 1) / (r["last"] - r["first"]) for r in runs if r["tokens"] > 1 and r["last"] > r["first"]]
    return {
        "clients": clients,
        "tokens": sum(r["tokens"] for r in runs),
        "tok_s_per_stream": round(statistics.median(per_stream), 1),
        "tok_s_aggregate": round(sum(r["tokens"] for r in runs) / wall, 1),
        "ttft_median_ms": round(statistics.median(r["ttft"] for r in runs) * 1000, 1),
        # The server's CPU time per generated token: llama.cpp's own work plus, for this site,
        # the Python side (engine thread, per-sequence threads, Django, Daphne).
        "cpu_ms_per_token": round(cpu_used * 1000 / max(1, sum(r["tokens"] for r in runs)), 2),
    }


def long_history(seed: int, pairs: int = 4) -> list[dict]:
    """~1,500 tokens of conversation (a unique prefix per seed, so nothing is cached for it)."""
    filler = " ".join(f"Note {seed}-{k}: the river, the bridge and the old mill stand near the market square."
                      for k in range(9))
    messages = [{"role": "system", "content": f"You are assistant number {seed}. Answer briefly."}]
    for k in range(pairs):
        messages += [{"role": "user", "content": f"Remember this, part {k}: {filler}"},
                     {"role": "assistant", "content": f"I will remember part {k}: {filler}"}]
    return messages + [{"role": "user", "content": "What stands near the market square?"}]


async def follow_up(url: str, extra: dict, samples: int, seed_base: int) -> dict:
    """TTFT of a turn after ~1,500 tokens of history: warm (the previous turn of the same
    conversation just ran, so its prompt is cached) and cold (a fresh conversation)."""
    warm, cold = [], []
    async with httpx.AsyncClient(limits=fresh_connections(2)) as client:
        for i in range(samples):
            history = long_history(seed_base + i)
            first = await openai_stream(client, url, history, 8, extra)  # cold: nothing shared
            cold.append(first["ttft"])
            turn = [*history, {"role": "assistant", "content": "The old mill."}, {"role": "user", "content": "And the bridge?"}]
            warm.append((await openai_stream(client, url, turn, 8, extra))["ttft"])
    return {"cold_ttft_ms": round(statistics.median(cold) * 1000, 1), "warm_ttft_ms": round(statistics.median(warm) * 1000, 1)}


async def disconnect(url: str, busy, extra: dict, samples: int) -> dict:
    """Read a few tokens of a long answer, drop the connection, time until the server is idle."""
    latencies = []
    async with httpx.AsyncClient(limits=fresh_connections(2)) as client:
        for i in range(samples):
            body = {"model": MODEL, "messages": messages_for(i), "stream": True, "max_tokens": 400, **extra}
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
                seen = 0
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and '"content"' in line:
                        seen += 1
                        if seen == 5:
                            break
                closed = time.perf_counter()
            while await busy(client):
                await asyncio.sleep(0.002)
            latencies.append(time.perf_counter() - closed)
    return {"stop_median_ms": round(statistics.median(latencies) * 1000, 1), "stop_max_ms": round(max(latencies) * 1000, 1)}


def anchor_busy(url: str):
    async def busy(client) -> bool:
        text = (await client.get(f"{url}/metrics")).text
        return float(re.search(r"^llamacpp:requests_processing (\S+)", text, re.M)[1]) > 0
    return busy


def site_busy_at(url: str):
    async def busy(client) -> bool:
        return (await client.get(f"{url}/healthz")).json()["running"] > 0
    return busy


# -- the run ---------------------------------------------------------------------------------------


def cpu() -> dict:
    """The CPU, and what llama.cpp was built to use on it."""
    import xllamacpp

    return {**cpu_info(), "llama_cpp": xllamacpp.get_system_info().strip()}


def measure(name: str, url: str, protocols: dict, busy, quick: bool, pid: int) -> dict:
    out = {"throughput": []}
    for protocol, (fn, extra) in protocols.items():
        for clients in (1, SLOTS):
            row = asyncio.run(load(fn, url, clients, extra, pid))
            out["throughput"].append({"server": name, "protocol": protocol, **row})
            print(f"  {name:9} {protocol:8} {clients} client(s): {row}", flush=True)
    extra = next(iter(protocols.values()))[1]
    out["follow_up"] = asyncio.run(follow_up(url, extra, 1 if quick else 4, 1000 if name == "anchor" else 2000))
    print(f"  {name:9} follow-up: {out['follow_up']}", flush=True)
    out["disconnect"] = asyncio.run(disconnect(url, busy, extra, 2 if quick else 8))
    print(f"  {name:9} disconnect: {out['disconnect']}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer samples and 32 new tokens, for a smoke run")
    parser.add_argument("--anchor-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.anchor_server:
        return anchor_main(args.anchor_server)
    global NEW_TOKENS
    if args.quick:
        NEW_TOKENS = 32
    machine = cpu()
    print(describe(machine))
    print(f"llama.cpp: {machine['llama_cpp']}")
    results: dict = {"machine": machine, "new_tokens": NEW_TOKENS, "slots": SLOTS}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. llama.cpp's own server.
        port = free_port()
        anchor = Process([sys.executable, __file__, "--anchor-server", str(port)], f"http://127.0.0.1:{port}/health",
                         env, tmp / "anchor.log")
        url = f"http://127.0.0.1:{port}"
        try:
            results["anchor"] = {"start_s": round(anchor.start_s, 2)}
            print(f"\nanchor (llama.cpp's server) ready in {anchor.start_s:.2f} s")
            results["anchor"] |= measure("anchor", url, {"openai": (openai_stream, SAMPLING)}, anchor_busy(url), args.quick,
                                         anchor.process.pid)
        finally:
            anchor.stop()

        # 2. This site, first start on an empty cache and data directory.
        data = tmp / "data"
        site_env = {**env, "CHATGLM_DATA_DIR": str(data), "DATABASE_URL": f"sqlite:///{data / 'db.sqlite3'}",
                    "CHATGLM_CACHE_DIR": str(tmp / "models"), "CHATGLM_MODEL": "", "CHATGLM_MAX_QUEUE": "256"}
        data.mkdir()
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=site_env, check=True,
                       capture_output=True)
        port = free_port()
        site = Process([sys.executable, "manage.py", "serve", "--port", str(port)], f"http://127.0.0.1:{port}/healthz",
                       site_env, tmp / "site.log")
        url = f"http://127.0.0.1:{port}"
        try:
            health = httpx.get(f"{url}/healthz").json()
            assert health["backend"] == "llamacpp", health
            results["site"] = {"start_s": round(site.start_s, 2)}
            print(f"\nthis site (llamacpp backend) ready in {site.start_s:.2f} s (empty cache)")
            protocols = {"openai": (openai_stream, {"temperature": 0}), "stream": (seed_stream, {}),
                         "websocket": (websocket_stream, {})}
            results["site"] |= measure("site", url, protocols, site_busy_at(url), args.quick, site.process.pid)
        finally:
            site.stop()
    report(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llamacpp.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {RESULTS / 'llamacpp.json'}")


def report(results: dict) -> None:
    anchor, site = results["anchor"], results["site"]
    base = {row["clients"]: row for row in anchor["throughput"]}
    print(f"\nSmolLM2-135M Q4_1, greedy, {NEW_TOKENS} new tokens; {results['machine']['model']}, "
          f"{results['machine']['cores']} cores ({' '.join(results['machine']['flags'])})")
    head = ["server", "protocol", "clients", "tok/s/stream", "tok/s total", "TTFT ms", "CPU ms/token", "x anchor tok/s",
            "TTFT - anchor ms"]
    print("  ".join(f"{h:>14}" for h in head))
    for row in anchor["throughput"] + site["throughput"]:
        ref = base[row["clients"]]
        cells = [row["server"], row["protocol"], row["clients"], row["tok_s_per_stream"], row["tok_s_aggregate"],
                 row["ttft_median_ms"], row["cpu_ms_per_token"], round(row["tok_s_aggregate"] / ref["tok_s_aggregate"], 2),
                 round(row["ttft_median_ms"] - ref["ttft_median_ms"], 1)]
        print("  ".join(f"{c:>14}" for c in cells))
    print(f"\n{'':>10}{'start s':>10}{'cold TTFT ms':>14}{'follow-up TTFT ms':>19}{'stop ms (median/max)':>22}")
    for name, r in (("anchor", anchor), ("site", site)):
        print(f"{name:>10}{r['start_s']:>10}{r['follow_up']['cold_ttft_ms']:>14}{r['follow_up']['warm_ttft_ms']:>19}"
              f"{str(r['disconnect']['stop_median_ms']) + ' / ' + str(r['disconnect']['stop_max_ms']):>22}")


if __name__ == "__main__":
    main()
