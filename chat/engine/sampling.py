"""Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling with a
repetition penalty. Shared by every backend that runs its own decode loop: the penalty and the
greedy choice run over the whole batch at once, sampled rows draw one by one."""

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
    """CTRL's penalty, as transformers applies it: divide the positive logits of seen tokens,
    multiply the negative ones. `seen` is a bool mask shaped like `logits` (rows [B, V])."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def pick_tokens(
    logits: torch.Tensor,
    configs: list[SamplingConfig],
    generators: list[torch.Generator | None],
    seen: torch.Tensor,
) -> torch.Tensor:
    """The next token id of every row ([B] long, on the logits' device) from logits [B, V].

    The repetition penalty and the greedy choice run once over the batch (rows sharing a
    penalty together); rows that sample draw one by one, each with its settings and generator.
    """
    logits = logits.float()
    groups: dict[float, list[int]] = {}
    for index, config in enumerate(configs):
        if config.repetition_penalty != 1.0:
            groups.setdefault(config.repetition_penalty, []).append(index)
    for penalty, indices in groups.items():
        if len(indices) == len(configs):
            logits = apply_repetition_penalty(logits, seen, penalty)
        else:
            index = torch.tensor(indices, device=logits.device)
            part = apply_repetition_penalty(logits.index_select(0, index), seen.index_select(0, index), penalty)
            logits = logits.index_copy(0, index, part)
    tokens = logits.argmax(-1)
    sampled = [index for index, config in enumerate(configs) if not config.greedy]
    if sampled:
        tokens = tokens.clone()
        for index in sampled:
            tokens[index] = sample_next(logits[index], configs[index], generators[index])
    return tokens


def sample_next(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None) -> int:
    """Pick the next token id from a 1-D logits row (float32), penalised already."""
    logits = logits.float()
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
