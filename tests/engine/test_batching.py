"""The torch backends' shared batching: the token budget (one rule for every backend) and the cache bookkeeping helpers
(the batched next-token pick is tested in test_sampling.py)."""

from __future__ import annotations

import pytest
import torch

from chat.engine.backends.fake import FakeBackend
from chat.engine.batching import cat_left_padded, padding_columns
from chat.engine.vocabulary import GenerationParams


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
    """One rule for every backend (Backend.token_budget), shown on the fake one."""
    assert FakeBackend(context_length=1024).token_budget(params, prompt) == expected


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
