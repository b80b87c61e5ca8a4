"""Decode speed and weight memory of the native ChatGLM v2 network: float32 vs int8 vs int4 on CPU.

A randomly initialised model of ChatGLM2's shape at a moderate size (default hidden 1024,
4 layers, 16 heads of 64, 2 KV groups, SwiGLU width 2816, vocab 65024) is quantized the way
`--quantize 8|4` does it, then each variant prefills a short prompt and decodes a fixed
number of tokens (greedy, batch 1 and batch 4), best of a few runs. Prints a table and writes JSON under
bench/results/. Random weights make the text meaningless; speed and memory are what count.

    .venv/bin/python bench/bench_chatglm.py [--hidden 1024 --layers 4 --tokens 32 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_info, describe  # noqa: E402
from chat.engine.networks.chatglm import ChatGLMConfig, ChatGLMv2  # noqa: E402
from chat.engine.networks.loading import QUANTIZABLE  # noqa: E402
from chat.engine.quantize import QuantizedLinear, weight_bytes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def build_model(args: argparse.Namespace, bits: int) -> ChatGLMv2:
    config = ChatGLMConfig(
        family="v2", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
        num_heads=args.hidden // 64, head_dim=64, ffn_hidden_size=args.ffn, kv_groups=2,
        layernorm_eps=1e-5, context_length=8192, eos_token_id=2,
    )
    torch.manual_seed(0)
    model = ChatGLMv2(config)
    for parameter in model.parameters():
        nn.init.normal_(parameter, std=0.02)
    if bits in (8, 4):
        for name, module in list(model.named_modules()):
            if QUANTIZABLE.match(name):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, QuantizedLinear(module, bits))
    return model.eval()


def block_bytes(model: nn.Module) -> int:
    """Weights of the transformer blocks: what quantization shrinks (embeddings stay float)."""
    return sum(weight_bytes(layer) for layer in model.transformer.encoder.layers)


def decode_speed(model: ChatGLMv2, batch: int, prompt_len: int, tokens: int, repeats: int) -> float:
    """Decode tokens per second (all rows together), after an untimed prefill.

    The best of `repeats` runs: on a shared machine the slower runs measure the neighbours.
    """
    prompts = [[(7 * row + i) % 60000 + 3 for i in range(prompt_len)] for row in range(batch)]
    best = 0.0
    for _ in range(repeats):
        logits, state = model.prefill(prompts)
        logits = model.decode(state, logits.argmax(-1).tolist())  # warm the decode path
        started = time.perf_counter()
        for _ in range(tokens):
            logits = model.decode(state, logits.argmax(-1).tolist())
        best = max(best, batch * tokens / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=65024)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()

    rows = []
    for bits, label in ((16, "fp32"), (8, "int8"), (4, "int4")):
        model = build_model(args, bits)
        row = {
            "variant": label,
            "total_weight_mib": weight_bytes(model) / 2**20,
            "block_weight_mib": block_bytes(model) / 2**20,
        }
        for batch in args.batches:
            row[f"tok_s_batch{batch}"] = decode_speed(model, batch, args.prompt, args.tokens, args.repeats)
        rows.append(row)
        del model

    speed_columns = [f"tok_s_batch{b}" for b in args.batches]
    header = f"{'variant':<8}{'total MiB':>11}{'blocks MiB':>12}" + "".join(f"{c:>16}" for c in speed_columns)
    print(describe(cpu_info()))
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['variant']:<8}{row['total_weight_mib']:>11.1f}{row['block_weight_mib']:>12.1f}"
            + "".join(f"{row[c]:>16.1f}" for c in speed_columns)
        )

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"chatglm-{stamp}.json"
    out.write_text(json.dumps({
        "model": {k: getattr(args, k) for k in ("hidden", "layers", "ffn", "vocab")}
        | {"heads": args.hidden // 64, "kv_groups": 2},
        "prompt_tokens": args.prompt,
        "decode_tokens": args.tokens,
        "repeats_best_of": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_info(),
        "results": rows,
    }, indent=2))
    print(f"\nwrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")


if __name__ == "__main__":
    main()
