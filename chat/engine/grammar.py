"""Constrained decoding on the torch path: llguidance masks each constrained row's logits.

Why llguidance (bench/bench_grammar.py, docs/structured-output.md): it takes both kinds of
`Constraint` (JSON Schema and Lark; xgrammar has no Lark), it needs no per-schema compile
step before the first token (its parser is lazy; xgrammar compiles each schema ahead), and its
per-token mask on a 49k vocabulary costs about what xgrammar's does.

A `Vocabulary` is the grammar engine's view of one model's token ids (built once per backend,
on first use: about a second for a 49k Hugging Face tokenizer); `Vocabulary.matcher()` starts
one row's grammar state. Nothing here runs for rows without a constraint.
"""

from __future__ import annotations

from collections.abc import Callable

import llguidance
import llguidance.torch
import numpy as np
import torch

from .constraints import Constraint, UnsupportedConstraint, grammar_of


class Vocabulary:
    """llguidance's tokenizer for one model, padded to the width of its logits (ids past the
    tokenizer are never allowed)."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, eos_ids: frozenset[int]):
        self.tokenizer = tokenizer
        self.width = tokenizer.vocab_size
        self.eos_ids = eos_ids

    @classmethod
    def of_hf(cls, hf_tokenizer, width: int, eos_ids) -> Vocabulary:
        import llguidance.hf

        eos = sorted(eos_ids)
        return cls(llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=width, eos_token=eos), frozenset(eos))

    @classmethod
    def of_chatglm(cls, tokenizer, width: int) -> Vocabulary:
        """The native ChatGLM sentencepiece tokenizer, through llguidance's TokenizerWrapper."""
        from llguidance._tokenizer import TokenizerWrapper

        eos = sorted(tokenizer.eos_token_ids)
        wrapped = TokenizerWrapper(_SentencePieceTokens(tokenizer, width, eos[0]))
        return cls(llguidance.LLTokenizer(wrapped, eos_token=eos), frozenset(eos))

    def matcher(self, constraint: Constraint) -> Matcher:
        return Matcher(llguidance.LLMatcher(self.tokenizer, grammar_of(constraint), log_level=0))


class LazyVocabulary:
    """A backend's Vocabulary for a logits width, built on first use (on the engine thread,
    the only caller): a model that never sees a constraint never builds it."""

    def __init__(self, build: Callable[[int], Vocabulary]):
        self._build = build
        self._by_width: dict[int, Vocabulary] = {}

    def __call__(self, width: int) -> Vocabulary:
        if width not in self._by_width:
            self._by_width[width] = self._build(width)
        return self._by_width[width]


class _SentencePieceTokens:
    """What llguidance's TokenizerWrapper reads: each id's bytes (ids that are no text get a
    name of their own and are listed as special), and a tokenize function."""

    def __init__(self, tokenizer, width: int, eos: int):
        spelled = tokenizer.token_bytes()
        spelled += [None] * (width - len(spelled))
        self.tokens = [b if b is not None else f"<|special {i}|>".encode() for i, b in enumerate(spelled)]
        self.special_token_ids = [i for i, b in enumerate(spelled) if b is None]
        self.eos_token_id, self.bos_token_id = eos, None
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        # llguidance tokenizes forced parts of the answer (a `:` the schema requires) in the
        # middle of text: without the "▁" that sentencepiece puts before text of its own.
        return self._tokenizer.encode_continuation(text)


class Matcher:
    """One row's grammar state."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self._matcher = matcher
        self._check()

    def _check(self) -> None:
        if self._matcher.is_error():
            # Only a schema/grammar the engine cannot follow gets here (validated at submit).
            raise UnsupportedConstraint(f"The grammar engine failed: {self._matcher.get_error()}")

    def fill(self, bitmask: torch.Tensor, index: int) -> None:
        llguidance.torch.fill_next_token_bitmask(self._matcher, bitmask, index)

    def accept(self, token: int) -> bool:
        """Advance past the chosen token; False if the grammar refused it (a bug)."""
        return self._matcher.consume_token(token)

    @property
    def done(self) -> bool:
        """The grammar allows nothing more: the answer is complete."""
        return self._matcher.is_stopped()


def mask_rows(logits: torch.Tensor, rows: list[int], matchers: list[Matcher]) -> None:
    """Set to -inf, in place, every logit of `rows` that their matcher does not allow."""
    bitmask = llguidance.torch.allocate_token_bitmask(len(rows), logits.shape[-1])
    for index, matcher in enumerate(matchers):
        matcher.fill(bitmask, index)
    index = torch.tensor(rows, device=logits.device)
    part = logits.index_select(0, index)
    apply_bitmask(part, bitmask)
    logits.index_copy_(0, index, part)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """-inf, in place, for every id whose bit is 0 in the [B, ceil(V/32)] int32 bitmask (bit
    i % 32 of word i // 32, little-endian); ids past the bitmask are never allowed."""
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=-1, bitorder="little")
    allowed = torch.from_numpy(bits[:, : logits.shape[-1]]).bool()
    if allowed.shape[-1] < logits.shape[-1]:
        allowed = torch.nn.functional.pad(allowed, (0, logits.shape[-1] - allowed.shape[-1]))
    logits.masked_fill_(~allowed.to(logits.device), float("-inf"))
