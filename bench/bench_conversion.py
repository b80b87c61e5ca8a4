"""Checkpoint -> GGUF conversion cost: time, throughput and peak memory per output type, and the
cost of the cache key (sampled digest) against a full SHA-256 of the weights.

A synthetic ChatGLM2-shaped checkpoint (float16 `.bin` shards, as published; default hidden 1024,
8 layers, vocab 65024: about 0.45 GB) is written once, then converted by `ensure_gguf` to each
output type, each in a fresh process. Peak private memory (RssAnon, sampled every 5 ms) above the
process's baseline (torch + gguf imported) shows that conversion holds about one tensor, not the
model; total RSS also counts the mmapped checkpoint pages, which are page cache.
Prints a table and writes JSON under bench/results/.

    .venv/bin/python bench/bench_conversion.py [--hidden 1024 --layers 8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FIXTURE = ROOT / "tests" / "fixtures" / "chatglm" / "chatglm2-6b-tiny"
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_info, describe  # noqa: E402

CHILD = """
import json, resource, sys, time
from pathlib import Path
from chat.engine.conversion import ensure_gguf

import threading

def anon_mb():  # private memory: mmapped checkpoint pages are page cache, not counted here
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
base = anon_mb()
peak = base
done = threading.Event()
def sample():
    global peak
    while not done.wait(0.005):
        peak = max(peak, anon_mb())
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
path = ensure_gguf(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
seconds = time.perf_counter() - start
done.set()
rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "baseline_mb": base, "peak_mb": peak, "rss_peak_mb": rss_peak,
                  "out_mb": path.stat().st_size / 1e6}))
"""


def build_checkpoint(directory: Path, hidden: int, layers: int, vocab: int, ffn: int, shards: int) -> int:
    import torch

    directory.mkdir(parents=True)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(FIXTURE / name, directory / name)
    heads, groups = hidden // 64, 2
    config = json.loads((FIXTURE / "config.json").read_text())
    config.update(hidden_size=hidden, num_layers=layers, num_attention_heads=heads, kv_channels=64,
                  multi_query_group_num=groups, ffn_hidden_size=ffn, padded_vocab_size=vocab)
    (directory / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(0)

    def weight(*shape):
        return (torch.randn(*shape, generator=generator) * 0.02).half()

    tensors = {"transformer.embedding.word_embeddings.weight": weight(vocab, hidden),
               "transformer.rotary_pos_emb.inv_freq": torch.ones(16).half()}
    qkv = hidden + 2 * groups * 64
    for i in range(layers):
        p = f"transformer.encoder.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": torch.ones(hidden).half(),
            p + "self_attention.query_key_value.weight": weight(qkv, hidden),
            p + "self_attention.query_key_value.bias": weight(qkv),
            p + "self_attention.dense.weight": weight(hidden, hidden),
            p + "post_attention_layernorm.weight": torch.ones(hidden).half(),
            p + "mlp.dense_h_to_4h.weight": weight(2 * ffn, hidden),
            p + "mlp.dense_4h_to_h.weight": weight(hidden, ffn),
        })
    tensors["transformer.encoder.final_layernorm.weight"] = torch.ones(hidden).half()
    tensors["transformer.output_layer.weight"] = weight(vocab, hidden)
    names = list(tensors)
    weight_map, total = {}, 0
    for s in range(shards):
        file = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        part = {n: tensors[n] for n in names[s::shards]}
        torch.save(part, directory / file)
        weight_map.update({n: file for n in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    (directory / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=65024)
    parser.add_argument("--ffn", type=int, default=2816)
    parser.add_argument("--shards", type=int, default=3)
    args = parser.parse_args()
    from chat.engine.conversion.cache import checkpoint_key
    from chat.engine.conversion.source import inspect_checkpoint

    cpu = cpu_info()
    print(describe(cpu))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "chatglm2-synthetic"
        size = build_checkpoint(source, args.hidden, args.layers, args.vocab, args.ffn, args.shards)
        print(f"checkpoint: {size / 1e6:.0f} MB float16 in {args.shards} .bin shards")

        checkpoint = inspect_checkpoint(source)
        start = time.perf_counter()
        checkpoint_key(checkpoint, "f16")
        key_s = time.perf_counter() - start
        start = time.perf_counter()
        for path in checkpoint.files:
            with path.open("rb") as handle:
                hashlib.file_digest(handle, "sha256")
        full_s = time.perf_counter() - start  # page-cached: the CPU cost only, a cold read adds disk time

        rows = []
        for bits in (16, 8, 4):
            out = subprocess.run([sys.executable, "-c", CHILD, str(source), str(Path(tmp) / f"cache{bits}"), str(bits)],
                                 cwd=ROOT, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result.update(bits=bits, mb_per_s=size / 1e6 / result["seconds"])
            rows.append(result)

    print(f"\ncache key (sampled digest): {key_s * 1e3:.1f} ms | full SHA-256 of the shards (page-cached): "
          f"{full_s * 1e3:.0f} ms = {size / 1e6 / full_s:.0f} MB/s")
    print(f"\n{'quantize':>8} {'seconds':>8} {'MB/s in':>8} {'out MB':>7} {'anon base MB':>12} {'anon peak':>9} "
          f"{'peak-base':>9} {'RSS peak':>8}")
    for r in rows:
        print(f"{r['bits']:>8} {r['seconds']:>8.2f} {r['mb_per_s']:>8.0f} {r['out_mb']:>7.0f} {r['baseline_mb']:>12.0f} "
              f"{r['peak_mb']:>9.0f} {r['peak_mb'] - r['baseline_mb']:>9.0f} {r['rss_peak_mb']:>8.0f}")
    largest = args.vocab * args.hidden * 2 / 1e6
    print(f"(largest tensor: {largest:.0f} MB float16; the whole checkpoint: {size / 1e6:.0f} MB)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"conversion-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"cpu": cpu, "args": vars(args), "checkpoint_mb": size / 1e6, "key_ms": key_s * 1e3,
                               "full_sha256_ms": full_s * 1e3, "runs": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
