"""The native ChatGLM backend (v1 ChatGLM-6B, v2 ChatGLM2-6B, v3 ChatGLM3-6B).

Project-owned model and tokenizer code (chat/engine/models); nothing from the checkpoint is
executed. Sequences are decoded together: their prompts are left-padded into one batch, a
sequence that finishes (EOS, budget, stop string, cancellation) leaves the batch at once, so
it costs nothing in later steps, and requests that arrive meanwhile are prefilled and merged
into the running batch between steps (continuous batching).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from ..base import Backend, Message, ModelInfo, Sequence
from ..config import EngineConfig
from ..models.chatglm import ChatGLMBase
from ..models.chatglm_tokenizer import ChatGLMTokenizer
from ..models.loading import load_model
from ..sampling import SamplingConfig, make_generator, sample_next

log = logging.getLogger(__name__)

# The reference `chat()` / `stream_chat()` defaults of each family.
FAMILY_SAMPLING = {
    "v1": SamplingConfig(temperature=0.95, top_p=0.7),
    "v2": SamplingConfig(temperature=0.8, top_p=0.8),
    "v3": SamplingConfig(temperature=0.8, top_p=0.8),
}


@dataclasses.dataclass
class _Row:
    """One sequence's place in the decode batch."""

    seq: Sequence
    sampling: SamplingConfig
    generator: torch.Generator | None
    seen: list[int]  # prompt + generated ids, for the repetition penalty


class ChatGLMBackend(Backend):
    def __init__(self, config: EngineConfig):
        self.config = config
        self.checkpoint_dir = Path(config.model)
        self.max_batch_size = config.max_batch_size
        self.model: ChatGLMBase | None = None
        self.tokenizer: ChatGLMTokenizer | None = None

    def load(self) -> None:
        self.model, self.tokenizer = load_model(self.checkpoint_dir, self.config.torch_device, self.config.quantize)
        log.info("loaded ChatGLM %s from %s", self.model.config.family, self.checkpoint_dir)

    def warmup(self) -> None:
        """One prompt and one decode step: allocator and kernel set-up happen before real traffic."""
        model, tokenizer = self._loaded()
        logits, batch = model.prefill([tokenizer.build_prompt([{"role": "user", "content": "hi"}])])
        model.decode(batch, [int(logits[0].argmax())])

    @property
    def info(self) -> ModelInfo:
        model, _ = self._loaded()
        return ModelInfo(
            model_id=self.checkpoint_dir.resolve().name,
            backend="chatglm",
            device=self.config.torch_device,
            context_length=model.config.context_length,
            dtype=str(model.embedding_weight.dtype).removeprefix("torch."),
            quantize=self.config.quantize if self.config.quantize != 16 else None,
            source=f"{self.checkpoint_dir} (ChatGLM {model.config.family})",
        )

    def count_prompt_tokens(self, messages: list[Message]) -> int:
        """Tokenizer only, so safe from any thread: the tokenizer is immutable after load and
        sentencepiece's encode is a const, thread-safe call."""
        return len(self._prompt(messages))

    def _prompt(self, messages: list[Message]) -> list[int]:
        _, tokenizer = self._loaded()
        return tokenizer.build_prompt(messages)

    def _loaded(self) -> tuple[ChatGLMBase, ChatGLMTokenizer]:
        if self.model is None or self.tokenizer is None:
            raise RuntimeError("the ChatGLM backend is not loaded")
        return self.model, self.tokenizer

    def _budget(self, seq: Sequence, prompt_tokens: int) -> int:
        """New tokens allowed: max_new_tokens, then max_length (prompt + answer), then the context."""
        model, _ = self._loaded()
        budget = seq.params.max_new_tokens or self.default_max_new_tokens()
        if seq.params.max_length:
            budget = min(budget, seq.params.max_length - prompt_tokens)
        return min(budget, model.config.context_length - prompt_tokens)

    def generate(self, sequences: list[Sequence]) -> None:
        self.generate_continuous(sequences, lambda limit: [])

    def generate_continuous(self, sequences: list[Sequence], admit) -> None:
        """Decode the batch step by step; between steps, sequences that arrived since are
        prefilled and merged into it (continuous batching)."""
        model, tokenizer = self._loaded()
        eos = tokenizer.eos_token_ids
        rows, batch, logits = self._prefill(sequences)
        while True:
            room = self.max_batch_size - len(rows)
            new_rows, new_batch, new_logits = self._prefill(admit(room)) if room > 0 else ([], None, None)
            if new_rows:
                if batch is None:
                    batch, logits = new_batch, new_logits
                else:
                    batch.merge(new_batch)
                    logits = torch.cat([logits, new_logits])
                rows = rows + new_rows
            if not rows:
                return
            logits = logits.float().cpu()
            tokens, keep = [], []
            for index, row in enumerate(rows):
                token = self._next_token(logits[index], row)
                if token in eos:
                    row.seq.finish("stop")
                elif row.seq.push_token(token):  # False: budget, stop string or cancellation
                    tokens.append(token)
                    keep.append(index)
            if not keep:
                rows, batch, logits = [], None, None
                continue
            if len(keep) < len(rows):
                batch.select(keep)
                rows = [rows[index] for index in keep]
            logits = model.decode(batch, tokens)

    def _prefill(self, sequences: list[Sequence]):
        """Begin the sequences and run their prompts: (rows, their DecodeBatch, logits)."""
        model, tokenizer = self._loaded()
        defaults = FAMILY_SAMPLING[model.config.family]
        rows: list[_Row] = []
        prompts: list[list[int]] = []
        for seq in sequences:
            prompt = self._prompt(seq.messages)
            budget = self._budget(seq, len(prompt))
            seq.begin(len(prompt), tokenizer.stream_decoder(), budget)
            if budget <= 0:
                seq.finish("length")
                continue
            sampling = SamplingConfig.from_params(seq.params, defaults)
            rows.append(_Row(seq, sampling, make_generator(seq.params.seed), list(prompt)))
            prompts.append(prompt)
        if not rows:
            return [], None, None
        logits, batch = model.prefill(prompts)
        return rows, batch, logits

    @staticmethod
    def _next_token(logits: torch.Tensor, row: _Row) -> int:
        seen = None
        if row.sampling.repetition_penalty != 1.0:
            seen = torch.tensor(row.seen, dtype=torch.long)
        token = sample_next(logits, row.sampling, seen, row.generator)
        row.seen.append(token)
        return token

    def clear_cache(self) -> None:
        if self.config.device >= 0 and torch.cuda.is_available():
            torch.cuda.empty_cache()
