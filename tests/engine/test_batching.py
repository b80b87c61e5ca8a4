"""The torch backends' shared batching: token budget, the batched next-token pick (against the
one-row-at-a-time sampler it replaces) and the cache bookkeeping helpers."""

from __future__ import annotations

import threading

import pytest
import torch

from chat.engine.base import GenerationParams, Sequence
from chat.engine.batching import Row, cat_left_padded, padding_columns, pick_tokens, token_budget
from chat.engine.sampling import SamplingConfig, make_generator, sample_next


@pytest.mark.parametrize(
    "params,prompt,expected",
    [
        (GenerationParams(), 10, 512),  # the backend's default
        (GenerationParams(max_new_tokens=20), 10, 20),
        (GenerationParams(max_new_tokens=20, max_length=25), 10, 15),  # max_length counts the prompt
        (GenerationParams(max_length=10), 10, 0),  # no room left
        (GenerationParams(max_new_tokens=100), 1000, 24),  # the context (1024) caps it
        (GenerationParams(max_length=4000), 1000, 24),
    ],
)
def test_token_budget(params, prompt, expected):
    assert token_budget(params, prompt, context_length=1024, default_max_new_tokens=512) == expected


def _row(sampling: SamplingConfig, seed: int | None = None) -> Row:
    seq = Sequence([], GenerationParams(), lambda event: None, threading.Event())
    return Row(seq, sampling, make_generator(seed))


def test_batched_pick_equals_the_per_row_sampler():
    """Greedy and sampled rows with different penalties, picked in one pass, give exactly the
    ids that sample_next gives each row alone (same penalised logits, same generator draws)."""
    torch.manual_seed(0)
    vocab = 300
    configs = [
        SamplingConfig(temperature=0),
        SamplingConfig(temperature=0, repetition_penalty=1.3),
        SamplingConfig(temperature=0.9, top_p=0.8, repetition_penalty=1.3),
        SamplingConfig(temperature=0.7, top_k=20, repetition_penalty=0.7),
        SamplingConfig(temperature=0, repetition_penalty=2.5),
        SamplingConfig(temperature=1.0),
    ]
    changed = 0
    for trial in range(20):
        logits = torch.randn(len(configs), vocab) * 4
        seen_ids = [torch.randint(0, vocab, (int(torch.randint(1, 60, ())),)) for _ in configs]
        seen = torch.zeros(len(configs), vocab, dtype=torch.bool)
        for index, ids in enumerate(seen_ids):
            seen[index, ids] = True
        rows = [_row(config, seed=trial * 10 + i) for i, config in enumerate(configs)]
        picked = pick_tokens(logits, rows, seen).tolist()
        expected = [
            sample_next(logits[i], config, seen_ids[i], make_generator(trial * 10 + i))
            for i, config in enumerate(configs)
        ]
        assert picked == expected
        changed += picked[4] != int(logits[4].argmax())
    assert changed  # the penalty did change some greedy picks: the comparison is not vacuous


def test_penalty_shared_by_every_row_and_none_at_all():
    logits = torch.tensor([[3.0, 2.9, -1.0], [-0.5, -0.4, -3.0]])
    seen = torch.tensor([[True, False, False], [False, True, False]])
    greedy = SamplingConfig(temperature=0, repetition_penalty=2.0)
    assert pick_tokens(logits, [_row(greedy), _row(greedy)], seen).tolist() == [1, 0]
    assert pick_tokens(logits, [_row(SamplingConfig(temperature=0))] * 2, seen).tolist() == [0, 1]


def test_padding_columns_and_left_padded_concatenation():
    valid = torch.tensor([[False, False, True, True], [False, True, True, True]])
    assert padding_columns(valid) == 1
    assert padding_columns(torch.ones(2, 3, dtype=torch.bool)) == 0
    assert padding_columns(torch.zeros(2, 3, dtype=torch.bool)) == 0

    short, long = torch.ones(1, 2, 2, 3), torch.full((2, 2, 4, 3), 2.0)  # [B, heads, S, D]
    merged = cat_left_padded(short, long, dim=2)
    assert merged.shape == (3, 2, 4, 3)
    assert merged[0, :, :2].eq(0).all() and merged[0, :, 2:].eq(1).all() and merged[1:].eq(2).all()
    mask = cat_left_padded(torch.tensor([[True]]), torch.tensor([[True, True, True]]), dim=1, value=False)
    assert mask.tolist() == [[False, False, True], [True, True, True]]
