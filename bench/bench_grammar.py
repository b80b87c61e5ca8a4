"""Per-token cost of constrained decoding: llguidance against xgrammar on this project's tokenizers.

For each tokenizer (the embedded SmolLM2's Hugging Face tokenizer, 49k ids, and the native
ChatGLM sentencepiece tokenizers of the tiny fixtures under tests/fixtures/chatglm) and each
grammar engine, the same JSON Schema and the same schema-valid document, tokenized by that
tokenizer, are replayed token by token as a decode loop would: compute the allowed-token
bitmask, turn it into a -inf mask on a float32 logits row of the model's width, let the
matcher accept the token. Reported: building the engine's view of the vocabulary (once per
model), compiling the schema (once per request), and the median per-token time of the mask,
of applying it and of accepting the token (every step of every constrained row).

The ChatGLM fixtures' vocabularies are tiny (1.3k pieces): their rows show that the bridge from
the native tokenizer works and what a small vocabulary costs; the real ChatGLM vocabularies
(65k / 130k) cost about what SmolLM2's 49k does per id.

    .venv/bin/python bench/bench_grammar.py [--repeats 20]

xgrammar is not a dependency of the project: its rows are measured only where it is installed
(`pip install xgrammar==0.2.9`).

Writes bench/results/grammar-<stamp>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_info, describe  # noqa: E402
from chat.engine.grammar import apply_bitmask  # noqa: E402
RESULTS = ROOT / "bench" / "results"
MODEL_CACHE = ROOT / "data" / "models"
FIXTURES = ROOT / "tests" / "fixtures" / "chatglm"

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city", "zip"], "additionalProperties": False},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "tags", "address", "active"],
    "additionalProperties": False,
}
DOCUMENT = json.dumps({
    "name": "Ada Lovelace, Countess of Lovelace", "age": 36, "email": "ada@example.org",
    "tags": ["mathematics", "analytical engine", "poetry", "notes on the engine"],
    "address": {"city": "London", "zip": "W1J 7NT"}, "active": True,
})


def tokenizers() -> list[tuple[str, object, list[int], int]]:
    """(name, tokenizer, document ids, logits width) for every tokenizer on disk."""
    from transformers import AutoTokenizer

    from chat.engine.backends.transformers import embedded_gguf, gguf_cache_dir
    from chat.engine.networks.chatglm_tokenizer import load_tokenizer

    out = []
    smol = gguf_cache_dir(embedded_gguf(), MODEL_CACHE)
    if (smol / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(smol)
        out.append(("smollm2 (HF, 49k)", tok, tok.encode(DOCUMENT, add_special_tokens=False), len(tok)))
    else:
        print(f"skipping SmolLM2: no converted model under {smol} (run a transformers test first)")
    for family, folder in (("v1", "chatglm-6b-tiny"), ("v2", "chatglm2-6b-tiny"), ("v3", "chatglm3-6b-tiny")):
        tok = load_tokenizer(FIXTURES / folder, family)
        ids = tok.encode_continuation(DOCUMENT)  # no "▁" before the "{": JSON starts right there
        out.append((f"chatglm {family} (sentencepiece, {tok.vocab_size})", tok, ids, tok.vocab_size))
    return out


class LLGuidance:
    name = "llguidance"

    def vocabulary(self, tok, width):
        from chat.engine.grammar import Vocabulary

        if hasattr(tok, "token_bytes"):
            return Vocabulary.of_chatglm(tok, width).tokenizer
        return Vocabulary.of_hf(tok, width, [tok.eos_token_id]).tokenizer

    def compile(self, vocab):
        import llguidance

        matcher = llguidance.LLMatcher(vocab, llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA)))
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    def bitmask(self, width):
        import llguidance.torch

        return llguidance.torch.allocate_token_bitmask(1, width)

    def fill(self, matcher, bitmask):
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask(matcher, bitmask, 0)

    def accept(self, matcher, token):
        assert matcher.consume_token(token), matcher.get_error()


class XGrammar:
    name = "xgrammar"

    def vocabulary(self, tok, width):
        import xgrammar

        if hasattr(tok, "token_bytes"):  # native ChatGLM: its decoded bytes, as a raw vocabulary
            encoded = [b if b is not None else b"" for b in tok.token_bytes()]
            info = xgrammar.TokenizerInfo(encoded, xgrammar.VocabType.RAW, vocab_size=width,
                                          stop_token_ids=sorted(tok.eos_token_ids))
        else:
            info = xgrammar.TokenizerInfo.from_huggingface(tok, vocab_size=width)
        return xgrammar.GrammarCompiler(info, cache_enabled=False)

    def compile(self, compiler):
        import xgrammar

        return xgrammar.GrammarMatcher(compiler.compile_json_schema(json.dumps(SCHEMA)))

    def bitmask(self, width):
        import xgrammar

        return xgrammar.allocate_token_bitmask(1, width)

    def fill(self, matcher, bitmask):
        matcher.fill_next_token_bitmask(bitmask, 0)

    def accept(self, matcher, token):
        assert matcher.accept_token(token)


def measure(engine, tok, ids, width, repeats: int) -> dict:
    started = time.perf_counter()
    vocab = engine.vocabulary(tok, width)
    vocab_s = time.perf_counter() - started
    compile_s, fill, apply, accept = [], [], [], []
    logits = torch.zeros(1, width)
    bitmask = engine.bitmask(width)
    for _ in range(repeats):
        started = time.perf_counter()
        matcher = engine.compile(vocab)
        compile_s.append(time.perf_counter() - started)
        for token in ids:
            t0 = time.perf_counter()
            engine.fill(matcher, bitmask)
            t1 = time.perf_counter()
            apply_bitmask(logits, bitmask)  # the engine's own (chat/engine/grammar.py), for both
            t2 = time.perf_counter()
            engine.accept(matcher, token)
            t3 = time.perf_counter()
            fill.append(t1 - t0)
            apply.append(t2 - t1)
            accept.append(t3 - t2)
            logits.zero_()
    us = lambda values: round(1e6 * statistics.median(values), 1)  # noqa: E731
    return {"vocabulary_ms": round(1000 * vocab_s, 1), "compile_ms": round(1000 * statistics.median(compile_s), 2),
            "mask_us": us(fill), "apply_us": us(apply), "accept_us": us(accept),
            "per_token_us": round(us(fill) + us(apply) + us(accept), 1), "tokens": len(ids)}


def _engines() -> list:
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        print("xgrammar is not installed: llguidance only")
        return [LLGuidance()]
    return [LLGuidance(), XGrammar()]


ENGINES = _engines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the decode loop's mask work runs on the engine thread
    cpu = cpu_info()
    print(describe(cpu))
    rows = []
    for name, tok, ids, width in tokenizers():
        for engine in ENGINES:
            row = {"tokenizer": name, "engine": engine.name, **measure(engine, tok, ids, width, args.repeats)}
            rows.append(row)
    header = f"{'tokenizer':34} {'engine':10} {'vocab ms':>9} {'compile ms':>10} {'mask µs':>8} {'apply µs':>8} {'accept µs':>9} {'µs/token':>8}"
    print(header)
    for r in rows:
        print(f"{r['tokenizer']:34} {r['engine']:10} {r['vocabulary_ms']:9} {r['compile_ms']:10} {r['mask_us']:8} "
              f"{r['apply_us']:8} {r['accept_us']:9} {r['per_token_us']:8}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"grammar-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"cpu": cpu, "schema": SCHEMA, "document": DOCUMENT, "repeats": args.repeats,
                                "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
