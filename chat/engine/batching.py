"""Continuous batching for the torch backends: the decode loop they share.

A backend supplies what is model-specific: its prompt format and token decoder, how prompts
are prefilled into a key/value cache, and how that cache takes one step, drops rows and takes
newcomers in (a `KVBatch`). This module owns the rest, once for all: applying the token budget,
picking every row's next token in one batched pass (`sampling.pick_tokens`, with the ids each
row has seen kept as a [B, V] mask), the per-row bookkeeping (EOS, `Generation.push_token`),
dropping finished rows, and merging requests that arrived meanwhile between steps.

The helpers at the end do the cache bookkeeping that both cache layouts need: left-padding
two batches to one length and dropping columns that are padding in every row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

import torch
import torch.nn.functional as F

from .constraints import UnsupportedConstraint
from .generation import Decoder, Generation
from .grammar import Vocabulary, mask_rows
from .sampling import SamplingConfig, choose, logprobs_of, make_generator, penalise
from .vocabulary import ChatMessage, GenerationParams, TokenLogprob, TopLogprob

log = logging.getLogger(__name__)


class KVBatch(Protocol):
    """A backend's running batch: the key/value cache of its rows, in row order."""

    joinable: bool  # whether rows can be merged in (a cache of fixed layout cannot)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ([B] long); return the next logits [B, V]."""

    def select(self, rows: list[int]) -> None:
        """Keep only these rows, in this order."""

    def merge(self, other: KVBatch) -> None:
        """Append `other`'s rows after this batch's."""


class Row:
    """One sequence's place in the batch."""

    __slots__ = ("seq", "sampling", "generator", "matcher")

    def __init__(self, seq: Generation, sampling: SamplingConfig, generator: torch.Generator | None):
        self.seq, self.sampling, self.generator = seq, sampling, generator
        self.matcher = None  # the grammar state of a row with a constraint (grammar.Matcher)


class Batch:
    """Rows, their cache, the logits that pick their next tokens, the ids each row has seen
    (prompt and answer, as a [B, V] mask) for the repetition penalty, and how often each id
    occurs in each row's answer ([B, V]) for the frequency and presence penalties: each kept up
    to date while some row of the batch uses it (a row that joins brings its prompt's ids)."""

    def __init__(self, rows: list[Row], kv: KVBatch, logits: torch.Tensor, seen: torch.Tensor, counts: torch.Tensor):
        self.rows, self.kv, self.logits, self.seen, self.counts = rows, kv, logits, seen, counts

    def merge(self, other: Batch) -> None:
        self.kv.merge(other.kv)
        self.rows = self.rows + other.rows
        self.logits = torch.cat([self.logits, other.logits])
        self.seen = torch.cat([self.seen, other.seen])
        # Counts are one column wide in a batch none of whose rows uses them (see _prefill).
        width = max(self.counts.shape[-1], other.counts.shape[-1])
        self.counts = torch.cat([F.pad(c, (0, width - c.shape[-1])) for c in (self.counts, other.counts)])

    def select(self, keep: list[int]) -> None:
        self.kv.select(keep)
        index = torch.tensor(keep, device=self.seen.device)
        self.rows = [self.rows[i] for i in keep]
        self.seen = self.seen.index_select(0, index)
        self.counts = self.counts.index_select(0, index)


class ContinuousBatcher:
    """Drives one `Backend.run` call.

    `prompt(messages)` gives a sequence's prompt ids and `decoder()` a fresh token decoder for
    it; `prefill(prompts)` runs prompts and returns their last logits [B, V] and their KVBatch;
    `token_text(id)` is one token's text and exact bytes, for logprobs.
    """

    def __init__(
        self,
        *,
        prompt: Callable[[list[ChatMessage]], list[int]],
        decoder: Callable[[], Decoder],
        prefill: Callable[[list[list[int]]], tuple[torch.Tensor, KVBatch]],
        eos_ids: Iterable[int],
        budget: Callable[[GenerationParams, int], int],
        sampling_defaults: SamplingConfig,
        max_batch_size: int,
        device: torch.device | str,
        token_text: Callable[[int], tuple[str, bytes]],
        vocabulary: Callable[[int], Vocabulary] | None = None,
    ):
        self.prompt, self.decoder, self.prefill, self.token_text = prompt, decoder, prefill, token_text
        self.eos_ids = frozenset(eos_ids)
        self.budget = budget  # Backend.token_budget
        self.sampling_defaults = sampling_defaults
        self.max_batch_size = max_batch_size
        self.device = torch.device(device)
        # The grammar engine's view of the model's ids, for a logits width; built on first
        # use: rows without a constraint never need it.
        self.vocabulary = vocabulary

    def start(self, seq: Generation) -> list[int] | None:
        """Build the prompt and begin the sequence with its budget; None if it has no room."""
        prompt = self.prompt(seq.messages)
        budget = self.budget(seq.params, len(prompt))
        return prompt if seq.begin(len(prompt), self.decoder(), budget) else None

    def run(self, sequences: list[Generation], admit: Callable[[int], list[Generation]]) -> None:
        """Decode until every sequence has ended; between steps, up to the free room of
        sequences from `admit(n)` are prefilled and merged into the batch."""
        batch = self._prefill(sequences)
        while True:
            if batch is None or batch.kv.joinable:
                room = self.max_batch_size - (len(batch.rows) if batch else 0)
                joining = self._prefill(admit(room)) if room > 0 else None
                if batch is None:
                    batch = joining
                elif joining is not None:
                    batch.merge(joining)
            if batch is None:
                return
            batch = self._step(batch)

    def _prefill(self, sequences: list[Generation]) -> Batch | None:
        rows, prompts = [], []
        for seq in sequences:
            prompt = self.start(seq)
            if prompt is None:
                continue
            sampling = SamplingConfig.from_params(seq.params, self.sampling_defaults)
            rows.append(Row(seq, sampling, make_generator(seq.params.seed, self.device)))
            prompts.append(prompt)
        if not rows:
            return None
        logits, kv = self.prefill(prompts)
        seen = torch.zeros(len(rows), logits.shape[-1], dtype=torch.bool, device=logits.device)
        for index, prompt in enumerate(prompts):
            seen[index, torch.tensor(prompt, device=logits.device)] = True
        # Rows without frequency or presence penalties never read their counts (one column
        # then, so a batch without them carries no [B, V] of counts).
        width = logits.shape[-1] if any(row.sampling.counts_answer for row in rows) else 1
        counts = torch.zeros(len(rows), width, device=logits.device)
        batch = Batch(rows, kv, logits, seen, counts)
        failed = [index for index, row in enumerate(rows) if not self._constrain(row, logits.shape[-1])]
        if failed:
            keep = [index for index in range(len(rows)) if index not in failed]
            if not keep:
                return None
            batch.select(keep)
            batch.logits = batch.logits[torch.tensor(keep, device=logits.device)]
        return batch

    def _constrain(self, row: Row, width: int) -> bool:
        """Start the grammar of a row with a constraint; False (the sequence ended as an
        error) if it cannot be enforced. Submit refuses such constraints already."""
        constraint = row.seq.params.constraint
        if constraint is None:
            return True
        try:
            if self.vocabulary is None:
                raise UnsupportedConstraint("this backend has no grammar engine")
            row.matcher = self.vocabulary(width).matcher(constraint)
        except UnsupportedConstraint as exc:
            log.warning("constraint not enforceable: %s", exc)
            row.seq.finish("error", UnsupportedConstraint.code)
            return False
        return True

    def _step(self, batch: Batch) -> Batch | None:
        """Pick every row's next token, let each sequence account it, drop the rows that
        ended, and run one forward for the rest."""
        rows = batch.rows
        configs = [r.sampling for r in rows]
        logits = penalise(batch.logits, configs, batch.seen, batch.counts)
        constrained = [index for index, row in enumerate(rows) if row.matcher is not None]
        if constrained:  # last: the distribution drawn from (and its logprobs) is the grammar's
            mask_rows(logits, constrained, [rows[i].matcher for i in constrained])
        tokens = choose(logits, configs, [r.generator for r in rows])
        ids = tokens.tolist()  # the one device-to-host copy of the step
        eos, keep = self.eos_ids, []
        for index, (row, token) in enumerate(zip(batch.rows, ids)):
            if token in eos:  # a constrained row: only where its grammar accepts the answer
                row.seq.finish("stop")
            elif row.matcher is not None and not row.matcher.accept(token):
                log.error("the grammar refused the token it allowed (%d)", token)
                row.seq.finish("error", UnsupportedConstraint.code)
            elif row.seq.push_token(token, self._logprob(logits[index], row.sampling, token)):
                if row.matcher is not None and row.matcher.done:  # nothing may follow
                    row.seq.finish("stop")
                else:
                    keep.append(index)  # else: budget, stop string or cancellation
        if not keep:
            return None
        if any(row.sampling.repetition_penalty != 1.0 for row in rows):  # only they read `seen`
            batch.seen[torch.arange(len(ids), device=tokens.device), tokens] = True
        if batch.counts.shape[-1] > 1:
            batch.counts[torch.arange(len(ids), device=tokens.device), tokens] += 1
        if len(keep) < len(ids):
            batch.select(keep)
            tokens = tokens[torch.tensor(keep, device=tokens.device)]
        batch.logits = batch.kv.step(tokens)
        return batch

    def _logprob(self, logits: torch.Tensor, config: SamplingConfig, token: int) -> TokenLogprob | None:
        if config.logprobs is None:
            return None
        logprob, top = logprobs_of(logits, config, token)
        text, raw = self.token_text(token)
        return TokenLogprob(text, raw, logprob, tuple(TopLogprob(*self.token_text(i), lp) for i, lp in top))


# -- cache bookkeeping ------------------------------------------------------------------------


def padding_columns(valid: torch.Tensor) -> int:
    """How many leading columns of a [B, S] validity mask are padding in every row."""
    any_valid = valid.bool().any(0)
    return int(any_valid.int().argmax()) if bool(any_valid.any()) else 0


def cat_left_padded(first: torch.Tensor, second: torch.Tensor, dim: int, value=0) -> torch.Tensor:
    """Both batches' rows in one tensor: each left-padded along `dim` (a sequence axis) to the
    longer of the two, then stacked along dim 0. The padding is masked out by the caller."""
    length = max(first.shape[dim], second.shape[dim])

    def pad(tensor):
        missing = length - tensor.shape[dim]
        if not missing:
            return tensor
        return F.pad(tensor, (0, 0) * (tensor.dim() - 1 - dim) + (missing, 0), value=value)

    return torch.cat([pad(first), pad(second)])
