"""Does decoding on the engine's own thread cost speed? (docs/pitfalls.md#torch-threads)

The engine runs every torch call on one dedicated thread, because Daphne's event loop owns
the main thread. This measures the embedded SmolLM2's greedy decode loop (KV cache, batch 1)
in the main thread and in a worker thread, alternating, in child processes with and without
OMP_WAIT_POLICY=PASSIVE, and reports medians side by side. Writes bench/results/engine_thread.json.
Usage: .venv/bin/python bench/bench_engine_thread.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_info, describe  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TOKENS = 48

CHILD = r"""
import json, sys, threading, time, torch
sys.path.insert(0, ROOT)
from chat.engine.backends.transformers import TransformersBackend, embedded_gguf, gguf_cache_dir
from chat.engine.config import EngineConfig
from pathlib import Path
cache = Path(ROOT) / "data" / "models"
directory = gguf_cache_dir(embedded_gguf(), cache)
backend = TransformersBackend(EngineConfig(model=str(directory) if (directory / "config.json").exists() else "default", cache_dir=cache))

def decode():
    ids = torch.tensor([backend._prompt_ids([{"role": "user", "content": "Write a long story about the sea."}])])
    with torch.inference_mode():
        out = backend.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        started = time.perf_counter()
        for _ in range(TOKENS):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            out = backend.model(input_ids=token, cache=out.cache, use_cache=True, logits_to_keep=1)
        return TOKENS / (time.perf_counter() - started)

def in_thread():
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("rate", decode()))
    worker.start(); worker.join()
    return box["rate"]

loader = threading.Thread(target=backend.load) if WHERE == "thread" else None
if loader: loader.start(); loader.join()
else: backend.load()
run = in_thread if WHERE == "thread" else decode
run()  # warm-up
print(json.dumps([run() for _ in range(ROUNDS)]))
"""


def measure(where: str, passive: bool, rounds: int) -> list[float]:
    env = {**os.environ}
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    code = f"ROOT={str(ROOT)!r}; WHERE={where!r}; ROUNDS={rounds}; TOKENS={TOKENS}\n" + CHILD
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for passive in (False, True):
        for where in ("main", "thread"):
            rates = measure(where, passive, args.rounds)
            rows.append({"where": where, "omp_wait_policy": "PASSIVE" if passive else "(default)",
                         "median_tok_s": round(statistics.median(rates), 1),
                         "min": round(min(rates), 1), "max": round(max(rates), 1)})
    base = rows[0]["median_tok_s"]
    cpu = cpu_info()
    print(describe(cpu))
    print(f"SmolLM2-135M greedy decode, batch 1, {TOKENS} tokens, {args.rounds} rounds each")
    print(f"{'thread':>8} {'OMP_WAIT_POLICY':>16} {'median tok/s':>13} {'min':>7} {'max':>7} {'vs main':>8}")
    for row in rows:
        print(f"{row['where']:>8} {row['omp_wait_policy']:>16} {row['median_tok_s']:>13} {row['min']:>7} "
              f"{row['max']:>7} {row['median_tok_s'] / base:>8.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine_thread.json").write_text(json.dumps({"cpu": cpu, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
