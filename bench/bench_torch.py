"""Continuous batching of the torch backends against the raw decode loop of the same model.

For each model, side by side in one run and interleaved round by round:

* raw: the model's own KV-cached forward on B identical prompts, greedy argmax, no serving
  work at all (no detokenizer, no events, no masks beyond what the model builds itself);
* engine: the backend under `Engine` (the scheduler's thread, continuous batching): B
  requests with the same prompt, greedy, no penalty, no stop strings, max_new_tokens N.

Both count the prefill and N new tokens per stream (1 prefill + N-1 decode forwards). The
ratio engine/raw of tokens/s is what serving costs (1.0 would be free). Also measured, as it
does not depend on how fast the model is or how busy the machine is: the serving overhead per
step, the CPU time of the decoding thread outside the model's forward calls (on a faster
machine or a GPU the forward shrinks and this is what is left).

`--baseline DIR` measures another checkout of the code (e.g. `git worktree add /tmp/before
<commit>`) in the same run: each code tree decodes in a worker process of its own, and the
rounds alternate between them, so before/after ratios are taken side by side.

Models: the embedded SmolLM2-135M (transformers backend, float32, from the cache under
data/models that the backend builds from the GGUF), and a ChatGLM3-shaped network of a
similar size with random weights (native chatglm backend), saved once (float16, as the real
checkpoints are) under data/bench/ with the tiny v3 fixture's tokenizer. Its output rows past
the tokenizer's ids and its EOS rows are zero, so greedy decoding picks real pieces and never
stops early.

The machine may be shared: the medians of --repeats rounds are reported, and only the
ratios of one run mean anything. Writes bench/results/torch-<stamp>.json.

    .venv/bin/python bench/bench_torch.py [--models smollm2 chatglm] [--repeats 3] [--tokens 128]
                                          [--baseline DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the tests and `serve` run

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODEL_CACHE = ROOT / "data" / "models"
BENCH_DIR = ROOT / "data" / "bench"
MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]
# ChatGLM3-6B's layout at about SmolLM2-135M's size (its vocabulary is the real one's).
CHATGLM_SHAPE = dict(hidden_size=768, num_layers=12, num_attention_heads=12, kv_channels=64,
                     multi_query_group_num=2, ffn_hidden_size=2048, padded_vocab_size=65024)


# -- the two models -------------------------------------------------------------------------


def smollm2_backend():
    from chat.engine.backends.transformers import (
        TransformersBackend,
        embedded_gguf,
        gguf_cache_dir,
    )
    from chat.engine.config import EngineConfig

    directory = gguf_cache_dir(embedded_gguf(), MODEL_CACHE)
    model = str(directory) if (directory / "config.json").is_file() else "default"  # "default" converts once
    return TransformersBackend(EngineConfig(model=model, cache_dir=MODEL_CACHE, max_batch_size=8))


def chatglm_checkpoint() -> Path:
    """A ChatGLM3 checkpoint of CHATGLM_SHAPE with random weights, built once."""
    from safetensors.torch import save_file
    from torch import nn

    from chat.engine.networks.chatglm import ChatGLMConfig, ChatGLMv2
    from chat.engine.networks.chatglm_tokenizer import load_tokenizer

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
    from chat.engine.config import EngineConfig

    return ChatGLMBackend(EngineConfig(model=str(chatglm_checkpoint()), backend="chatglm", max_batch_size=8))


# -- the raw loops --------------------------------------------------------------------------


def raw_transformers(backend, streams: int, tokens: int) -> None:
    """Prefill + tokens-1 greedy decode steps of `streams` identical prompts."""
    prompt = backend._prompt_ids(MESSAGES)
    model = backend.model
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt] * streams), use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(tokens - 1):
            out = model(input_ids=token, cache=out.cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)


def raw_chatglm(backend, streams: int, tokens: int) -> None:
    prompt = backend._prompt(MESSAGES)
    model = backend.model
    with torch.inference_mode():
        logits, batch = model.prefill([prompt] * streams)
        token = logits.argmax(-1)
        for _ in range(tokens - 1):
            token = model.decode(batch, token.tolist()).argmax(-1)


class ModelClock:
    """CPU time of the calling thread inside the model's forward calls (the rest of a decode
    thread's CPU time is serving overhead)."""

    def __init__(self, obj, names):
        self.inside = 0.0
        for name in names:
            setattr(obj, name, self._timed(getattr(obj, name)))

    def _timed(self, method):
        def timed(*args, **kwargs):
            started = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.inside += time.thread_time() - started
        return timed


# -- a worker: one model of one code tree ------------------------------------------------------


class Worker:
    """Loads one model through `Engine` and answers `raw B` / `engine B` measurements."""

    def __init__(self, name: str):
        from chat.engine.scheduler import Engine

        factory, self.raw = {"smollm2": (smollm2_backend, raw_transformers),
                             "chatglm": (chatglm_backend, raw_chatglm)}[name]
        self.engine = Engine(factory)
        self.info = self.engine.wait_ready(600)
        backend = self.engine.backend
        model_methods = ["forward"] if self.info.backend == "transformers" else ["prefill", "decode"]
        self.clock = ModelClock(backend.model, model_methods)
        self.thread_cpu = 0.0
        run = backend.run

        def timed_run(sequences, admit):  # runs on the engine thread
            started = time.thread_time()
            try:
                return run(sequences, admit)
            finally:
                self.thread_cpu += time.thread_time() - started

        backend.run = timed_run
        # The raw loop runs on one thread of its own, as the engine decodes on its own thread.
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.pool.submit(self.raw, backend, 1, 4).result()  # warm-up of this thread
        asyncio.run(self._engine(1, 4))
        while self.engine.running_count():
            time.sleep(0.001)

    def measure(self, kind: str, streams: int, tokens: int) -> dict:
        self.clock.inside = self.thread_cpu = 0.0
        started = time.perf_counter()
        if kind == "raw":
            def timed_raw():
                begun = time.thread_time()
                self.raw(self.engine.backend, streams, tokens)
                self.thread_cpu = time.thread_time() - begun

            self.pool.submit(timed_raw).result()
            per_stream = None
        else:
            results = asyncio.run(self._engine(streams, tokens))
            while self.engine.running_count():  # the results leave before run returns
                time.sleep(0.001)
            produced = [r.completion_tokens for r in results]
            if produced != [tokens] * streams or any(r.finish_reason != "length" for r in results):
                raise RuntimeError(f"the engine stopped early ({produced}): pick another prompt")
            per_stream = statistics.median(r.duration for r in results)
        wall = time.perf_counter() - started
        return {"wall": wall, "per_stream": per_stream or wall,
                "overhead_ms_per_step": 1000 * (self.thread_cpu - self.clock.inside) / tokens}

    async def _engine(self, streams: int, tokens: int):
        from chat.engine.vocabulary import GenerationParams, GenerationResult

        params = GenerationParams(temperature=0, repetition_penalty=1.0, max_new_tokens=tokens)
        requests = [self.engine.submit(MESSAGES, params) for _ in range(streams)]  # no await between: one batch

        async def drain(request):
            async for event in request.events():
                if isinstance(event, GenerationResult):
                    return event

        return await asyncio.gather(*(drain(r) for r in requests))


def worker_main(name: str) -> None:
    """The worker's side of the pipe: one JSON command a line in, one JSON answer a line out."""
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter stays off the pipe
    torch.set_num_threads(os.cpu_count() or 1)
    worker = Worker(name)
    print(json.dumps({"backend": worker.info.backend}), file=out, flush=True)
    for line in sys.stdin:
        kind, streams, tokens = json.loads(line)
        print(json.dumps(worker.measure(kind, streams, tokens)), file=out, flush=True)
    worker.engine.stop()


class WorkerProcess:
    def __init__(self, code: Path, name: str):
        env = {**os.environ, "PYTHONPATH": str(code)}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", name], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.backend = self._read()["backend"]

    def ask(self, kind: str, streams: int, tokens: int) -> dict:
        self.proc.stdin.write(json.dumps([kind, streams, tokens]) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a worker died (run it alone: {sys.executable} {__file__} --worker ...)")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=("smollm2", "chatglm"), default=["smollm2", "chatglm"])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout of the code, measured in the same run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.worker)
    # Here, not at the top: a worker's sys.path must hold only its own tree's code (PYTHONPATH),
    # and ROOT ahead of a --baseline tree would measure the current chat/ twice.
    sys.path.insert(0, str(ROOT))
    from bench.machine import cpu_info, describe

    cpu = cpu_info()
    print(describe(cpu))
    print(f"torch threads {os.cpu_count()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"medians of {args.repeats} rounds, {args.tokens} new tokens per stream (prefill included); "
          "overhead: decode-thread CPU ms per step outside the model\n")
    header = (f"{'model':<9}{'backend':<14}{'code':<10}{'streams':>8}{'raw tok/s':>11}{'engine tok/s':>14}"
              f"{'per stream':>12}{'engine/raw':>12}{'raw ovh':>9}{'eng ovh':>9}")
    print(header + "\n" + "-" * len(header), flush=True)
    trees = {"current": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    rows = []
    for name in args.models:
        workers = {label: WorkerProcess(code, name) for label, code in trees.items()}
        samples: dict = {}
        for streams in args.streams:  # one-off costs of each batch size (allocations) stay out
            for worker in workers.values():
                worker.ask("raw", streams, 4), worker.ask("engine", streams, 4)
        for _ in range(args.repeats):
            for streams in args.streams:
                for label, worker in workers.items():
                    for kind in ("raw", "engine"):
                        samples.setdefault((label, streams, kind), []).append(worker.ask(kind, streams, args.tokens))
        for worker in workers.values():
            worker.close()
        for label in trees:
            for streams in args.streams:
                raw, eng = samples[(label, streams, "raw")], samples[(label, streams, "engine")]
                raw_s = statistics.median(m["wall"] for m in raw)
                eng_s = statistics.median(m["wall"] for m in eng)
                rows.append({
                    "model": name, "backend": workers[label].backend, "code": label, "streams": streams,
                    "tokens": args.tokens,
                    "raw_tok_s": streams * args.tokens / raw_s,
                    "engine_tok_s": streams * args.tokens / eng_s,
                    "engine_per_stream_tok_s": args.tokens / statistics.median(m["per_stream"] for m in eng),
                    "ratio": raw_s / eng_s,
                    "raw_overhead_ms_per_step": statistics.median(m["overhead_ms_per_step"] for m in raw),
                    "engine_overhead_ms_per_step": statistics.median(m["overhead_ms_per_step"] for m in eng),
                    "raw_s": [m["wall"] for m in raw], "engine_s": [m["wall"] for m in eng],
                })
                r = rows[-1]
                print(f"{r['model']:<9}{r['backend']:<14}{r['code']:<10}{r['streams']:>8}{r['raw_tok_s']:>11.1f}"
                      f"{r['engine_tok_s']:>14.1f}{r['engine_per_stream_tok_s']:>12.1f}{r['ratio']:>12.3f}"
                      f"{r['raw_overhead_ms_per_step']:>9.2f}{r['engine_overhead_ms_per_step']:>9.2f}", flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"torch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "cpu": cpu, "torch": torch.__version__, "threads": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "repeats": args.repeats,
        "trees": {label: str(code) for label, code in trees.items()},
        "note": "medians; the machine may be shared, compare the ratios of one run only",
        "chatglm_shape": CHATGLM_SHAPE, "results": rows,
    }, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
