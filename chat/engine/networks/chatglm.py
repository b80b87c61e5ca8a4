"""ChatGLM networks, written from the architecture notes of tests/fixtures/chatglm/README.md (section 4).

* `ChatGLMv1`: ChatGLM-6B's GLM block (2-D rotary with float16-rounded frequencies, a
  prefix-LM mask, residuals on the *normalised* input scaled by sqrt(56), tanh GeLU).
* `ChatGLMv2`: ChatGLM2-6B / ChatGLM3-6B (RMSNorm, multi-query groups, rotary on half of
  each head with interleaved pairs, SwiGLU). v3 is the same network as v2.

Parameter names equal the checkpoints', so a state dict loads as it is. Both models decode
a batch of left-padded prompts with a key/value cache: `prefill()` runs the prompts, then
`decode()` runs one new token per row; `DecodeBatch.select()` drops finished rows.
`score()` is the full-sequence, teacher-forced forward (tests, evaluation).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..batching import cat_left_padded, padding_columns


@dataclasses.dataclass(frozen=True)
class ChatGLMConfig:
    family: str  # "v1", "v2" or "v3"
    vocab_size: int  # model vocab (padded past the tokenizer)
    hidden_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    ffn_hidden_size: int
    kv_groups: int  # v2/v3 multi-query groups; v1: num_heads
    layernorm_eps: float
    context_length: int
    eos_token_id: int
    # v1 only: the control ids that shape positions and the mask
    mask_token_id: int = -1
    gmask_token_id: int = -1
    sop_token_id: int = -1

    @classmethod
    def from_dict(cls, raw: dict[str, Any], family: str) -> ChatGLMConfig:
        if family == "v1":
            hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
            return cls(
                family=family,
                vocab_size=raw["vocab_size"],
                hidden_size=hidden,
                num_layers=raw["num_layers"],
                num_heads=heads,
                head_dim=hidden // heads,
                ffn_hidden_size=raw.get("inner_hidden_size") or 4 * hidden,
                kv_groups=heads,
                layernorm_eps=raw.get("layernorm_epsilon", 1e-5),
                context_length=raw.get("max_sequence_length", 2048),
                eos_token_id=raw["eos_token_id"],
                mask_token_id=raw["mask_token_id"],
                gmask_token_id=raw["gmask_token_id"],
                sop_token_id=raw["bos_token_id"],
            )
        return cls(
            family=family,
            vocab_size=raw["padded_vocab_size"],
            hidden_size=raw["hidden_size"],
            num_layers=raw["num_layers"],
            num_heads=raw["num_attention_heads"],
            head_dim=raw["kv_channels"],
            ffn_hidden_size=raw["ffn_hidden_size"],
            kv_groups=raw["multi_query_group_num"] if raw.get("multi_query_attention") else raw["num_attention_heads"],
            layernorm_eps=raw.get("layernorm_epsilon", 1e-5),
            context_length=raw.get("seq_length", 2048),
            eos_token_id=raw.get("eos_token_id", 2),
        )


class KVCache:
    """Keys and values of every layer, [batch, kv_heads, capacity, head_dim], grown on demand.

    Capacity grows in chunks rather than being reserved for the longest possible answer: a
    v1 batch of 8 at full context would otherwise pin many gigabytes that EOS-stopped
    answers never use.
    """

    GROW = 256

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' k/v (at `length`) and return all keys/values so far."""
        end = self.length + k.shape[2]
        cached_k, cached_v = self.keys[layer], self.values[layer]
        if cached_k is None or end > cached_k.shape[2]:
            capacity = end + self.GROW
            grown_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
            grown_v = v.new_empty(grown_k.shape)
            if cached_k is not None:
                grown_k[:, :, : self.length] = cached_k[:, :, : self.length]
                grown_v[:, :, : self.length] = cached_v[:, :, : self.length]
            cached_k, cached_v = self.keys[layer], self.values[layer] = grown_k, grown_v
        cached_k[:, :, self.length : end] = k
        cached_v[:, :, self.length : end] = v
        return cached_k[:, :, :end], cached_v[:, :, :end]

    def select(self, rows: torch.Tensor) -> None:
        self.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, rows) for v in self.values]


@dataclasses.dataclass
class DecodeBatch:
    """State of a batch between decode steps."""

    cache: KVCache
    key_valid: torch.Tensor  # [B, S] bool: False for left padding
    next_position: torch.Tensor  # v2: [B] next position; v1: [B, 2] (mask position, next block position)

    def select(self, rows: list[int]) -> None:
        """Keep only these rows (finished sequences leave the batch)."""
        index = torch.tensor(rows, device=self.key_valid.device)
        self.cache.select(index)
        self.key_valid = self.key_valid.index_select(0, index)
        self.next_position = self.next_position.index_select(0, index)
        self._trim()

    def _trim(self) -> None:
        """Drop leading cache positions that are padding in every row. Merges pad to the
        longest row and rows leave, so without this a batch that never empties (steady
        traffic) would carry an ever longer cache."""
        first = padding_columns(self.key_valid)
        if first:
            cache = self.cache
            cache.keys = [None if k is None else k[:, :, first:] for k in cache.keys]
            cache.values = [None if v is None else v[:, :, first:] for v in cache.values]
            cache.length -= first
            self.key_valid = self.key_valid[:, first:]

    def merge(self, other: DecodeBatch) -> None:
        """Take `other`'s rows in after this batch's (continuous batching). Both caches are
        left-padded to the longer length; the padding is masked out by `key_valid`, and the
        positions are per row, so neither batch's rows compute anything different."""
        mine, theirs = self.cache, other.cache
        for layer in range(len(mine.keys)):
            mine.keys[layer] = cat_left_padded(mine.keys[layer][:, :, : mine.length], theirs.keys[layer][:, :, : theirs.length], dim=2)
            mine.values[layer] = cat_left_padded(mine.values[layer][:, :, : mine.length], theirs.values[layer][:, :, : theirs.length], dim=2)
        mine.length = max(mine.length, theirs.length)
        self.key_valid = cat_left_padded(self.key_valid, other.key_valid, dim=1, value=False)
        self.next_position = torch.cat([self.next_position, other.next_position])
        self._trim()

    def step_mask(self) -> torch.Tensor:
        """Extend the key mask by one real position; return the step's mask [B, 1, 1, S]."""
        self.key_valid = F.pad(self.key_valid, (0, 1), value=True)
        return self.key_valid[:, None, None, :]


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids [B, T] left-padded with `pad_id`, and the validity mask [B, T]."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        valid[row, width - len(prompt) :] = True
    return ids.to(device), valid.to(device)


def attention_mask(allowed: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] mask from a structural mask [B|1, T, T] and the padding mask [B, T].

    Padding rows may attend to themselves only, so that no softmax row is empty (an empty
    row makes NaN, which would leak into the cache).
    """
    eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    return ((allowed & key_valid[:, None, :]) | eye)[:, None]


class ChatGLMBase(nn.Module):
    """What the two families share: the batched prefill/decode driver and the output head."""

    config: ChatGLMConfig
    pad_id = 0

    @property
    def device(self) -> torch.device:
        return self.embedding_weight.device

    @property
    def embedding_weight(self) -> torch.Tensor:
        """The word-embedding matrix (its device and dtype are the model's)."""
        raise NotImplementedError

    @torch.inference_mode()
    def score(self, ids: list[int]) -> torch.Tensor:
        """Logits [L, V] of a full sequence in one forward, with the model's default mask."""
        logits, _ = self.prefill([ids], last_only=False)
        return logits[0]

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], last_only: bool = True) -> tuple[torch.Tensor, DecodeBatch]:
        """Run left-padded prompts; return the logits at each prompt's end [B, V] and the batch."""
        ids, valid = left_pad(prompts, self.pad_id, self.device)
        positions, allowed, next_position = self._prompt_layout(ids, valid)
        cache = KVCache(self.config.num_layers)
        hidden = self.forward(ids, positions, attention_mask(allowed, valid), cache)
        if last_only:
            hidden = hidden[:, -1:]
        logits = self.head(hidden)
        batch = DecodeBatch(cache, valid, next_position)
        return (logits[:, -1] if last_only else logits), batch

    @torch.inference_mode()
    def decode(self, batch: DecodeBatch, tokens: list[int] | torch.Tensor) -> torch.Tensor:
        """One step: the new token of every row in (ids, or a [B] tensor); logits [B, V] out."""
        ids = torch.as_tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        positions = self._step_positions(batch)
        hidden = self.forward(ids, positions, batch.step_mask(), batch.cache)
        return self.head(hidden)[:, -1]

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states -> logits over the model vocab."""
        raise NotImplementedError

    def _prompt_layout(self, ids, valid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(positions, structural mask [B|1, T, T], next decode position) of left-padded prompts."""
        raise NotImplementedError

    def _step_positions(self, batch: DecodeBatch) -> torch.Tensor:
        """Positions of the next decode step; advances `batch.next_position`."""
        raise NotImplementedError


def _run_layers(layers: nn.ModuleList, hidden, positions, mask, cache: KVCache | None) -> torch.Tensor:
    for index, layer in enumerate(layers):
        hidden = layer(hidden, positions, mask, cache, index)
    if cache is not None:
        cache.length += hidden.shape[1]
    return hidden


def _attend(q, k, v, mask, cache: KVCache | None, layer: int) -> torch.Tensor:
    """q [B, T, nh, hn], k/v [B, T, g, hn] -> context [B, T, nh*hn]; query head h uses group h // (nh/g)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if cache is not None:
        k, v = cache.update(layer, k, v)
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])
    return context.transpose(1, 2).flatten(2)


# -- v1 -----------------------------------------------------------------------------------------


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class V1Attention(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x, rotary: tuple[torch.Tensor, torch.Tensor], mask, cache, layer) -> torch.Tensor:
        batch, length, _ = x.shape
        # Per head: [q | k | v] of head_dim each (not three contiguous hidden-size blocks).
        q, k, v = self.query_key_value(x).view(batch, length, self.num_heads, 3 * self.head_dim).chunk(3, dim=-1)
        q, k = self._rotary_2d(q, *rotary), self._rotary_2d(k, *rotary)
        return self.dense(_attend(q, k, v, mask, cache, layer))

    @staticmethod
    def _rotary_2d(x, cos, sin) -> torch.Tensor:
        """First half of each head rotated by the token positions, second half by the block positions."""
        halves = x.chunk(2, dim=-1)
        return torch.cat([h * cos[i] + _rotate_half(h) * sin[i] for i, h in enumerate(halves)], dim=-1)


class V1MLP(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.ffn_hidden_size)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size)

    def forward(self, x):
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))


class V1Layer(nn.Module):
    # The reference builds every block with its default num_layers=28: alpha = sqrt(2 * 28),
    # whatever the checkpoint's depth (README 4.1, step 5).
    ALPHA = math.sqrt(2 * 28)

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_eps)
        self.attention = V1Attention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_eps)
        self.mlp = V1MLP(config)

    def forward(self, x, rotary, mask, cache, layer):
        normed = self.input_layernorm(x)
        x = normed * self.ALPHA + self.attention(normed, rotary, mask, cache, layer)
        normed = self.post_attention_layernorm(x)
        return normed * self.ALPHA + self.mlp(normed)


class V1Transformer(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(V1Layer(config) for _ in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_eps)


class ChatGLMv1(ChatGLMBase):
    """ChatGLM-6B. `lm_head` shares the word-embedding matrix (the loader ties them)."""

    pad_id = 3  # <pad>; its value is irrelevant, padding is masked

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.config = config
        self.transformer = V1Transformer(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @property
    def embedding_weight(self) -> torch.Tensor:
        return self.transformer.word_embeddings.weight

    def tie_weights(self) -> None:
        self.lm_head.weight = self.transformer.word_embeddings.weight

    def forward(self, ids, positions, mask, cache=None):
        rotary = self._rotary(positions, self.embedding_weight.dtype)
        hidden = self.transformer.word_embeddings(ids)
        hidden = _run_layers(self.transformer.layers, hidden, rotary, mask, cache)
        return self.transformer.final_layernorm(hidden)

    def head(self, hidden):
        return self.lm_head(hidden)

    def _rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [2, B, T, 1, hn/2] for positions [B, 2, T].

        inv_freq is rounded to float16 as the reference builds it (its logits move by up to
        1.5e-3 otherwise), then used in float32.
        """
        dim = self.config.head_dim // 2
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=positions.device).float() / dim))
        inv_freq = inv_freq.half().float()
        angles = positions.transpose(0, 1).float()[..., None] * inv_freq  # [2, B, T, dim/2]
        angles = torch.cat((angles, angles), dim=-1)[..., None, :]
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def _prompt_layout(self, ids, valid):
        """2-D positions and the prefix-LM mask (README 4.1), per left-padded row."""
        cfg = self.config
        batch, width = ids.shape
        index = torch.arange(width, device=ids.device)
        pad = (~valid).sum(1)
        context = self._first(ids, cfg.sop_token_id)  # padded index of <sop>
        gmask = self._first(ids, cfg.gmask_token_id)
        mask_position = torch.where(gmask >= 0, gmask, self._first(ids, cfg.mask_token_id))
        if bool((context < 0).any() or (mask_position < 0).any()):
            raise ValueError("every v1 prompt needs [gMASK] (or [MASK]) and <sop>")
        mask_position = mask_position - pad
        before = index[None, :] < context[:, None]
        token_position = torch.where(before, (index[None, :] - pad[:, None]).clamp(min=0), mask_position[:, None])
        block_position = torch.where(before, 0, index[None, :] - context[:, None] + 1)
        positions = torch.stack((token_position, block_position), dim=1)
        allowed = (index[None, None, :] < context[:, None, None]) | (index[None, None, :] <= index[None, :, None])
        next_position = torch.stack((mask_position, block_position[:, -1] + 1), dim=1)
        return positions, allowed, next_position

    def _step_positions(self, batch):
        positions = batch.next_position.clone()[:, :, None]  # [B, 2, 1]
        batch.next_position[:, 1] += 1
        return positions

    @staticmethod
    def _first(ids: torch.Tensor, token: int) -> torch.Tensor:
        """Index of the first `token` in each row, -1 where absent."""
        hit = ids == token
        return torch.where(hit.any(1), hit.int().argmax(1), -1)


# -- v2 / v3 ------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (self.weight * (x * torch.rsqrt(variance + self.eps))).to(x.dtype)


class V2Attention(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.num_heads, self.groups, self.head_dim = config.num_heads, config.kv_groups, config.head_dim
        qkv_size = (self.num_heads + 2 * self.groups) * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, qkv_size, bias=True)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x, rotary, mask, cache, layer):
        batch, length, _ = x.shape
        q_size, kv_size = self.num_heads * self.head_dim, self.groups * self.head_dim
        q, k, v = self.query_key_value(x).split((q_size, kv_size, kv_size), dim=-1)
        q = _rotary_interleaved(q.view(batch, length, self.num_heads, self.head_dim), *rotary)
        k = _rotary_interleaved(k.view(batch, length, self.groups, self.head_dim), *rotary)
        v = v.view(batch, length, self.groups, self.head_dim)
        return self.dense(_attend(q, k, v, mask, cache, layer))


def _rotary_interleaved(x, cos, sin) -> torch.Tensor:
    """Rotate adjacent pairs (2i, 2i+1) of the first half of each head; the rest passes through."""
    rotary_dim = cos.shape[-1] * 2
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    even, odd = rotated.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    return torch.cat((rotated, passed), dim=-1)


class V2MLP(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 2 * config.ffn_hidden_size, bias=False)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)


class V2Layer(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.layernorm_eps)
        self.self_attention = V2Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.layernorm_eps)
        self.mlp = V2MLP(config)

    def forward(self, x, rotary, mask, cache, layer):
        x = x + self.self_attention(self.input_layernorm(x), rotary, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class V2Encoder(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.layers = nn.ModuleList(V2Layer(config) for _ in range(config.num_layers))
        self.final_layernorm = RMSNorm(config.hidden_size, config.layernorm_eps)


class V2Embedding(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)


class V2Transformer(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.embedding = V2Embedding(config)
        self.encoder = V2Encoder(config)
        self.output_layer = nn.Linear(config.hidden_size, config.vocab_size, bias=False)


class ChatGLMv2(ChatGLMBase):
    """ChatGLM2-6B and ChatGLM3-6B."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.config = config
        self.transformer = V2Transformer(config)

    @property
    def embedding_weight(self) -> torch.Tensor:
        return self.transformer.embedding.word_embeddings.weight

    def forward(self, ids, positions, mask, cache=None):
        rotary = self._rotary(positions, self.embedding_weight.dtype)
        hidden = self.transformer.embedding.word_embeddings(ids)
        hidden = _run_layers(self.transformer.encoder.layers, hidden, rotary, mask, cache)
        return self.transformer.encoder.final_layernorm(hidden)

    def head(self, hidden):
        return self.transformer.output_layer(hidden)

    def _rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [B, T, 1, hn/4]: theta_i = 1 / 10000^(2i / (hn/2)), float32, not rounded."""
        rotary_dim = self.config.head_dim // 2
        theta = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, device=positions.device).float() / rotary_dim))
        angles = positions.float()[..., None, None] * theta
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def _prompt_layout(self, ids, valid):
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        width = ids.shape[1]
        allowed = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()[None]
        return positions, allowed, positions[:, -1] + 1

    def _step_positions(self, batch):
        positions = batch.next_position[:, None].clone()
        batch.next_position += 1
        return positions


MODELS: dict[str, type[ChatGLMBase]] = {"v1": ChatGLMv1, "v2": ChatGLMv2, "v3": ChatGLMv2}
