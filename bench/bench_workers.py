"""One process with the model in process against `serve --workers 2` (two web workers in front
of one engine process, through the `openai` upstream backend), at 50 concurrent /stream clients.

What it shows is the cost or gain of the multi-process layout on this machine: every token
crosses one more HTTP hop (engine -> worker) but the web work (SSE framing, persistence, the
Channels layer) is split over two processes. Both servers run side by side in one run, on the
same model (`fake` by default: the layout's own overhead, not a model's speed), on SQLite and
Redis. Prints a table and writes bench/results/bench_workers.json.

    .venv/bin/python bench/bench_workers.py [--streams 50] [--tokens 64] [--model fake]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_info, describe  # noqa: E402
from tests.server import free_port  # noqa: E402

QUERY = "measure the streams of many clients at once " * 8


def start(args: list[str], env: dict, log: Path, ready_text: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port), *args],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200 and (
                    ready_text is None or ready_text in log.read_text()):
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"did not start:\n{log.read_text()}")


async def one_stream(client: httpx.AsyncClient, url: str, index: int, tokens: int) -> dict:
    sent = time.perf_counter()
    first = last = None
    deltas = tokens_out = 0
    async with client.stream("POST", f"{url}/stream", json={"query": f"{index} {QUERY}", "max_new_tokens": tokens},
                             timeout=300) as response:
        if response.status_code != 200:
            return {"error": response.status_code}
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data, now = json.loads(line[5:]), time.perf_counter()
                if data.get("finished"):
                    tokens_out = data["usage"]["completion_tokens"]
                    continue
                first = first or now
                last = now
                deltas += 1
            elif line.startswith("event: error"):
                return {"error": "stream error"}
    return {"ttft": first - sent, "duration": last - sent, "deltas": deltas, "tokens": tokens_out}


async def load(url: str, streams: int, tokens: int) -> dict:
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, i, tokens) for i in range(streams)))
        wall = time.perf_counter() - started
    ok = [r for r in results if "error" not in r]
    ttfts = sorted(r["ttft"] for r in ok)
    return {
        "streams": streams, "errors": len(results) - len(ok), "wall_s": round(wall, 2),
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
        "ttft_p50_ms": round(statistics.median(ttfts) * 1000, 1),
        "ttft_p95_ms": round(ttfts[int(len(ttfts) * 0.95) - 1] * 1000, 1),
        "stream_p50_s": round(statistics.median(r["duration"] for r in ok), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--model", default="fake")
    parser.add_argument("--delay-ms", default="20", help="the fake model's time per step")
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL_FOR_TESTS", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    machine = cpu_info()
    print(describe(machine))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra, ready in (("one process, model in process", [], None),
                                   ("serve --workers 2 + engine process", ["--workers", "2"], "2 workers serve")):
            data = Path(tmp) / name.split()[0]
            data.mkdir()
            env = {**os.environ, "CHATGLM_DATA_DIR": str(data), "DATABASE_URL": f"sqlite:///{data}/db.sqlite3",
                   "CHATGLM_MODEL": args.model, "CHATGLM_FAKE_DELAY_MS": args.delay_ms, "CHATGLM_MAX_BATCH": "64",
                   "CHATGLM_MAX_QUEUE": "256", "CHATGLM_ACCESS_LOG": "0", "REDIS_URL": args.redis}
            if not extra:
                env.pop("REDIS_URL")
            process, url = start(extra, env, Path(tmp) / f"{data.name}.log", ready)
            try:
                asyncio.run(load(url, 5, 8))  # warm-up
                rows[name] = asyncio.run(load(url, args.streams, args.tokens))
            finally:
                process.terminate()
                process.wait(60)
    header = f"{'layout':38} {'errors':>6} {'wall s':>7} {'tokens/s':>9} {'TTFT p50 ms':>12} {'TTFT p95 ms':>12} {'stream p50 s':>13}"
    print(f"{args.streams} concurrent /stream clients, {args.tokens} tokens each, model {args.model}")
    print(header)
    for name, row in rows.items():
        print(f"{name:38} {row['errors']:>6} {row['wall_s']:>7} {row['tokens_per_s']:>9} {row['ttft_p50_ms']:>12} "
              f"{row['ttft_p95_ms']:>12} {row['stream_p50_s']:>13}")
    out = ROOT / "bench" / "results" / "bench_workers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": machine, "args": vars(args), "results": rows}, indent=2))
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
