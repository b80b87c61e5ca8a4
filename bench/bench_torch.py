"""Continuous batching of the torch backends against the raw decode loop of the same model.

For each model, side by side in one process and interleaved round by round:

* raw: the model's own KV-cached forward on B identical prompts, greedy argmax, no serving
  work at all (no detokenizer, no events, no masks beyond what the model builds itself);
* engine: the backend under `Engine` (the scheduler's thread, continuous batching): B
  requests with the same prompt, greedy, no penalty, no stop strings, max_new_tokens N.

Both count the prefill and N new tokens per stream (1 prefill + N-1 decode forwards). The
ratio engine/raw is what serving costs; 1.0 would be free.

Models: the embedded SmolLM2-135M (transformers backend, float32, from the cache under
data/models that the backend builds from the GGUF), and a ChatGLM3-shaped network of a
similar size with random weights (native chatglm backend), saved once (float16, as the real
checkpoints are) under
data/bench/ with the tiny v3 fixture's tokenizer. Its output rows past the tokenizer's ids and
its EOS rows are zero, so greedy decoding picks real pieces and never stops early.

The machine may be shared: the medians of --repeats rounds are reported, and only the
ratios of one run mean anything. Writes bench/results/torch-<stamp>.json.

    .venv/bin/python bench/bench_torch.py [--models smollm2 chatglm] [--repeats 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the tests and `serve` run

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chat.engine.base import GenerationParams, GenerationResult  # noqa: E402
from chat.engine.config import EngineConfig  # noqa: E402
from chat.engine.scheduler import Engine  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MODEL_CACHE = ROOT / "data" / "models"
BENCH_DIR = ROOT / "data" / "bench"
MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]
# ChatGLM3-6B's layout at about SmolLM2-135M's size (its vocabulary is the real one's).
CHATGLM_SHAPE = dict(hidden_size=768, num_layers=12, num_attention_heads=12, kv_channels=64,
                     multi_query_group_num=2, ffn_hidden_size=2048, padded_vocab_size=65024)


def cpu_info() -> dict:
    model, flags = platform.processor(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = [f for f in value.split() if f.startswith(("avx", "amx", "fma", "sse4", "f16c"))]
        return {"model": model, "flags": " ".join(flags), "cores": os.cpu_count()}
    except OSError:
        return {"model": model, "flags": "", "cores": os.cpu_count()}


# -- the two models -------------------------------------------------------------------------


def smollm2_backend():
    from chat.engine.backends.transformers import TransformersBackend, embedded_gguf, gguf_cache_dir

    directory = gguf_cache_dir(embedded_gguf(), MODEL_CACHE)
    model = str(directory) if (directory / "config.json").is_file() else "default"  # "default" converts once
    return TransformersBackend(EngineConfig(model=model, cache_dir=MODEL_CACHE, max_batch_size=8))


def chatglm_checkpoint() -> Path:
    """A ChatGLM3 checkpoint of CHATGLM_SHAPE with random weights, built once."""
    from safetensors.torch import save_file
    from torch import nn

    from chat.engine.models.chatglm import ChatGLMConfig, ChatGLMv2
    from chat.engine.models.chatglm_tokenizer import load_tokenizer

    fixture = ROOT / "tests" / "fixtures" / "chatglm" / "chatglm3-6b-tiny"
    tag = "-".join(str(v) for v in CHATGLM_SHAPE.values())
    target = BENCH_DIR / f"chatglm3-bench-{tag}"
    if (target / "model.safetensors").is_file():
        return target
    raw = json.loads((fixture / "config.json").read_text()) | CHATGLM_SHAPE
    tokenizer = load_tokenizer(fixture, "v3")
    torch.manual_seed(0)
    model = ChatGLMv2(ChatGLMConfig.from_dict(raw, "v3"))
    for parameter in model.parameters():
        nn.init.normal_(parameter, std=0.02)
    with torch.no_grad():  # only real pieces can win the argmax, and never an EOS id
        output = model.transformer.output_layer.weight
        output[tokenizer.vocab_size:] = 0
        output[sorted(tokenizer.eos_token_ids)] = 0
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, partial / "model.safetensors")
    (partial / "config.json").write_text(json.dumps(raw, indent=2))
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(fixture / name, partial / name)
    partial.rename(target)
    return target


def chatglm_backend():
    from chat.engine.backends.chatglm import ChatGLMBackend

    return ChatGLMBackend(EngineConfig(model=str(chatglm_checkpoint()), backend="chatglm", max_batch_size=8))


# -- the raw loops --------------------------------------------------------------------------


def raw_transformers(backend, streams: int, tokens: int) -> float:
    """Seconds for prefill + tokens-1 greedy decode steps of `streams` identical prompts."""
    prompt = backend._prompt_ids(MESSAGES)
    model = backend.model
    started = time.perf_counter()
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt] * streams), use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(tokens - 1):
            out = model(input_ids=token, cache=out.cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
    return time.perf_counter() - started


def raw_chatglm(backend, streams: int, tokens: int) -> float:
    prompt = backend._prompt(MESSAGES)
    model = backend.model
    started = time.perf_counter()
    with torch.inference_mode():
        logits, batch = model.prefill([prompt] * streams)
        token = logits.argmax(-1).tolist()
        for _ in range(tokens - 1):
            token = model.decode(batch, token).argmax(-1).tolist()
    return time.perf_counter() - started


# -- the engine -----------------------------------------------------------------------------


async def through_engine(engine: Engine, streams: int, tokens: int) -> tuple[float, list[GenerationResult]]:
    params = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=tokens)
    started = time.perf_counter()
    requests = [engine.submit(MESSAGES, params) for _ in range(streams)]  # no await between: one batch

    async def drain(request):
        async for event in request.events():
            if isinstance(event, GenerationResult):
                return event

    results = await asyncio.gather(*(drain(r) for r in requests))
    return time.perf_counter() - started, results


def measure(name: str, factory, raw, streams_list: list[int], tokens: int, repeats: int) -> list[dict]:
    engine = Engine(factory)
    info = engine.wait_ready(600)
    backend = engine.backend
    # The raw loop runs on one worker thread of its own, as the engine does on its thread.
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    worker.submit(raw, backend, 1, 4).result()  # warm-up of this thread's kernels
    asyncio.run(through_engine(engine, 1, 4))
    samples = {s: {"raw": [], "engine": [], "engine_stream": []} for s in streams_list}
    for _ in range(repeats):
        for streams in streams_list:
            samples[streams]["raw"].append(worker.submit(raw, backend, streams, tokens).result())
            wall, results = asyncio.run(through_engine(engine, streams, tokens))
            produced = [r.completion_tokens for r in results]
            if produced != [tokens] * streams or any(r.finish_reason != "length" for r in results):
                raise SystemExit(f"{name}: the engine stopped early ({produced}); pick another prompt")
            samples[streams]["engine"].append(wall)
            samples[streams]["engine_stream"].append(statistics.median(r.duration for r in results))
    engine.stop()
    worker.shutdown()
    rows = []
    for streams, s in samples.items():
        raw_s, eng_s = statistics.median(s["raw"]), statistics.median(s["engine"])
        rows.append({
            "model": name, "backend": info.backend, "streams": streams, "tokens": tokens,
            "raw_tok_s": streams * tokens / raw_s,
            "engine_tok_s": streams * tokens / eng_s,
            "engine_per_stream_tok_s": tokens / statistics.median(s["engine_stream"]),
            "ratio": raw_s / eng_s,
            "raw_s": s["raw"], "engine_s": s["engine"],
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=("smollm2", "chatglm"), default=["smollm2", "chatglm"])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cpu = cpu_info()
    models = {"smollm2": (smollm2_backend, raw_transformers), "chatglm": (chatglm_backend, raw_chatglm)}
    rows = []
    for name in args.models:
        rows += measure(name, *models[name], args.streams, args.tokens, args.repeats)

    print(f"CPU: {cpu['model']}, {cpu['cores']} cores, torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}\nflags: {cpu['flags']}")
    print(f"medians of {args.repeats} rounds, {args.tokens} new tokens per stream (prefill included)\n")
    header = f"{'model':<9}{'backend':<14}{'streams':>8}{'raw tok/s':>11}{'engine tok/s':>14}{'per stream':>12}{'engine/raw':>12}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['model']:<9}{r['backend']:<14}{r['streams']:>8}{r['raw_tok_s']:>11.1f}{r['engine_tok_s']:>14.1f}"
              f"{r['engine_per_stream_tok_s']:>12.1f}{r['ratio']:>12.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"torch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "repeats": args.repeats,
        "note": "medians; the machine may be shared, compare the ratios of one run only",
        "chatglm_shape": CHATGLM_SHAPE, "results": rows,
    }, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
