"""Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling with a
repetition penalty. Shared by every backend that runs its own decode loop, one row per sequence."""

from __future__ import annotations

import dataclasses

import torch

from .base import GenerationParams


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0

    @classmethod
    def from_params(cls, params: GenerationParams, defaults: SamplingConfig | None = None) -> SamplingConfig:
        d = defaults or cls()
        return cls(
            temperature=d.temperature if params.temperature is None else params.temperature,
            top_p=d.top_p if params.top_p is None else params.top_p,
            top_k=d.top_k if params.top_k is None else params.top_k,
            repetition_penalty=d.repetition_penalty if params.repetition_penalty is None else params.repetition_penalty,
        )

    @property
    def greedy(self) -> bool:
        # top_p 0 keeps only the most likely token: greedy (OpenAI clients send it to mean that).
        return self.temperature <= 1e-5 or self.top_k == 1 or self.top_p <= 0


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty, as transformers applies it: divide positive logits of seen tokens, multiply negative."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    scores = logits.gather(-1, seen)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(-1, seen, scores)


def sample_next(
    logits: torch.Tensor,
    config: SamplingConfig,
    seen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Pick the next token id from a 1-D logits row (float32)."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.greedy:
        return int(torch.argmax(logits))
    logits = logits / config.temperature
    if config.top_k > 0:
        kth = torch.topk(logits, min(config.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= config.top_p
        drop[..., 0] = False  # the most likely token always stays: never an all -inf row
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
