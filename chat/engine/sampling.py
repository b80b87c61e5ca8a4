"""Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling, after
penalties and biases. Shared by every backend that runs its own decode loop: the penalties and
the greedy choice run over the whole batch at once, sampled rows draw one by one.

The order, which `logprobs` follow (docs/sampling.md): the model's logits, then the repetition
penalty (CTRL's, over prompt and answer), then OpenAI's frequency and presence penalties (over
the answer), then `logit_bias`: the penalised logits. A greedy row takes their argmax, and its
logprobs are their log-softmax. A sampled row divides them by the temperature, keeps the top-k,
then the top-p nucleus, and draws from the softmax of that: its logprobs are the log-softmax
of that very distribution (a token outside it has -9999, as OpenAI writes an impossible one)."""

from __future__ import annotations

import dataclasses

import torch

from .vocabulary import GenerationParams


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # alternatives to report per token; None: no logprobs

    @classmethod
    def from_params(cls, params: GenerationParams, defaults: SamplingConfig | None = None) -> SamplingConfig:
        d = defaults or cls()
        return cls(
            temperature=d.temperature if params.temperature is None else params.temperature,
            top_p=d.top_p if params.top_p is None else params.top_p,
            top_k=d.top_k if params.top_k is None else params.top_k,
            repetition_penalty=d.repetition_penalty if params.repetition_penalty is None else params.repetition_penalty,
            frequency_penalty=params.frequency_penalty or 0.0,
            presence_penalty=params.presence_penalty or 0.0,
            logit_bias=params.logit_bias,
            logprobs=params.logprobs,
        )

    @property
    def counts_answer(self) -> bool:
        """Whether this row reads the counts of its answer's tokens."""
        return bool(self.frequency_penalty or self.presence_penalty)

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
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token id of every row ([B] long, on the logits' device) from logits [B, V]."""
    return choose(penalise(logits, configs, seen, counts), configs, generators)


def penalise(
    logits: torch.Tensor, configs: list[SamplingConfig], seen: torch.Tensor, counts: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits [B, V] (float32) after each row's repetition penalty (rows sharing one together),
    frequency and presence penalties (`counts`: [B, V] occurrences of each id in the answer)
    and logit bias."""
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
    if any(config.counts_answer or config.logit_bias for config in configs):
        logits = logits.clone()  # changed in place below: never the caller's tensor
    for index, config in enumerate(configs):
        if config.counts_answer and counts is not None:
            row = counts[index]
            logits[index] -= row * config.frequency_penalty + (row > 0).float() * config.presence_penalty
        if config.logit_bias:
            ids = torch.tensor([i for i, _ in config.logit_bias], device=logits.device)
            logits[index, ids] += torch.tensor([b for _, b in config.logit_bias], device=logits.device)
    return logits


def choose(logits: torch.Tensor, configs: list[SamplingConfig], generators: list[torch.Generator | None]) -> torch.Tensor:
    """Every row's token from penalised logits: the greedy rows' argmax in one pass, sampled rows
    drawn one by one, each with its settings and generator."""
    tokens = logits.argmax(-1)
    sampled = [index for index, config in enumerate(configs) if not config.greedy]
    if sampled:
        tokens = tokens.clone()
        for index in sampled:
            tokens[index] = sample_next(logits[index], configs[index], generators[index])
    return tokens


def filtered(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """A 1-D row of penalised logits as a sampled row draws from it: divided by the
    temperature, tokens outside the top-k and the top-p nucleus at -inf."""
    logits = logits.float() / config.temperature
    if config.top_k > 0:
        kth = torch.topk(logits, min(config.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= config.top_p
        drop[..., 0] = False  # the most likely token always stays: never an all -inf row
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None) -> int:
    """Pick the next token id from a 1-D logits row (float32), penalised already."""
    logits = logits.float()
    if config.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(filtered(logits, config), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


IMPOSSIBLE = -9999.0  # OpenAI's logprob of a token that cannot be drawn (JSON has no -inf)


def logprobs_of(logits: torch.Tensor, config: SamplingConfig, token: int) -> tuple[float, list[tuple[int, float]]]:
    """The log probability of `token` and the `config.logprobs` most likely (id, logprob) pairs,
    from a 1-D row of penalised logits, in the distribution the row was picked from (see the
    module's docstring)."""
    row = logits.float() if config.greedy else filtered(logits, config)
    logprobs = torch.log_softmax(row, dim=-1).clamp(min=IMPOSSIBLE)
    top = []
    if config.logprobs:
        values, ids = torch.topk(logprobs, min(config.logprobs, logprobs.numel()))
        top = list(zip(ids.tolist(), values.tolist()))
    return float(logprobs[token]), top
