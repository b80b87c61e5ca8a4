"""The native ChatGLM backend (v1 ChatGLM-6B, v2 ChatGLM2-6B, v3 ChatGLM3-6B).

Project-owned model and tokenizer code (chat/engine/networks); nothing from the checkpoint is
executed. Sequences are decoded together: their prompts are left-padded into one batch, a
sequence that finishes (EOS, budget, stop string, cancellation) leaves the batch at once, so
it costs nothing in later steps, and requests that arrive meanwhile are prefilled and merged
into the running batch between steps (continuous batching).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import grammar
from ..backend import Backend
from ..batching import ContinuousBatcher
from ..config import EngineConfig
from ..constraints import Constraint
from ..generation import Generation
from ..networks.chatglm import ChatGLMBase, DecodeBatch
from ..networks.chatglm_tokenizer import ChatGLMTokenizer
from ..networks.loading import load_model
from ..sampling import SamplingConfig
from ..tools import (
    chatglm3_messages,
    chatglm3_parser,
    forced_call_constraint,
    forced_call_refusal,
    tool_names,
)
from ..vocabulary import ChatMessage, GenerationParams, ModelInfo

log = logging.getLogger(__name__)

# The reference `chat()` / `stream_chat()` defaults of each family.
FAMILY_SAMPLING = {
    "v1": SamplingConfig(temperature=0.95, top_p=0.7),
    "v2": SamplingConfig(temperature=0.8, top_p=0.8),
    "v3": SamplingConfig(temperature=0.8, top_p=0.8),
}


class ChatGLMBackend(Backend):
    def __init__(self, config: EngineConfig):
        self.config = config
        self.checkpoint_dir = Path(config.model)
        self.max_batch_size = config.max_batch_size
        self.model: ChatGLMBase | None = None
        self.tokenizer: ChatGLMTokenizer | None = None
        self._vocabulary = grammar.LazyVocabulary(
            lambda width: grammar.Vocabulary.of_chatglm(self._loaded()[1], width))

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
        model, tokenizer = self._loaded()
        return ModelInfo(
            model_id=self.checkpoint_dir.resolve().name,
            backend="chatglm",
            device=self.config.torch_device,
            context_length=model.config.context_length,
            dtype=str(model.embedding_weight.dtype).removeprefix("torch."),
            quantize=self.config.quantize if self.config.quantize != 16 else None,
            source=f"{self.checkpoint_dir} (ChatGLM {model.config.family})",
            vocab_size=tokenizer.vocab_size,
        )

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        """Tokenizer only, so safe from any thread: the tokenizer is immutable after load and
        sentencepiece's encode is a const, thread-safe call."""
        return len(self._prompt(messages))

    def _prompt(self, messages: list[ChatMessage]) -> list[int]:
        _, tokenizer = self._loaded()
        if tokenizer.family == "v3":
            messages = chatglm3_messages(messages)  # tools, calls and results in ChatGLM3's own format
        return tokenizer.build_prompt(messages)

    def tools_refusal(self, messages: list[ChatMessage], params: GenerationParams) -> str | None:
        _, tokenizer = self._loaded()
        if tokenizer.family != "v3":
            return f"ChatGLM {tokenizer.family} has no tool-calling format (ChatGLM3 has)"
        return forced_call_refusal(messages, params, "python")

    def tool_constraint(self, messages: list[ChatMessage], params: GenerationParams) -> Constraint | None:
        return forced_call_constraint(messages, params, "python")

    def tool_parser(self, messages: list[ChatMessage], params: GenerationParams):
        names = tool_names(messages)
        return chatglm3_parser(names, parallel=params.parallel_tool_calls is not False) if names else None

    def _loaded(self) -> tuple[ChatGLMBase, ChatGLMTokenizer]:
        if self.model is None or self.tokenizer is None:
            raise RuntimeError("the ChatGLM backend is not loaded")
        return self.model, self.tokenizer

    def check_constraint(self, constraint: Constraint) -> None:
        grammar.grammar_of(constraint)

    def run(self, sequences: list[Generation], admit) -> None:
        """Decode the batch step by step; between steps, sequences that arrived since are
        prefilled and merged into it (continuous batching)."""
        model, tokenizer = self._loaded()
        batcher = ContinuousBatcher(
            prompt=self._prompt, decoder=tokenizer.stream_decoder, prefill=self._prefill,
            eos_ids=tokenizer.eos_token_ids, budget=self.token_budget,
            sampling_defaults=FAMILY_SAMPLING[model.config.family], max_batch_size=self.max_batch_size,
            device=model.device, token_text=tokenizer.token_text, vocabulary=self._vocabulary,
        )
        with torch.inference_mode():
            batcher.run(sequences, admit)

    def _prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, _KV]:
        model, _ = self._loaded()
        logits, batch = model.prefill(prompts)
        return logits, _KV(model, batch)

    def clear_cache(self) -> None:
        if self.config.device >= 0 and torch.cuda.is_available():
            torch.cuda.empty_cache()


class _KV:
    """The model's DecodeBatch as the shared batcher drives it."""

    joinable = True  # the cache grows per row and pads on the left: rows can always join

    def __init__(self, model: ChatGLMBase, batch: DecodeBatch):
        self.model, self.batch = model, batch

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.decode(self.batch, tokens)

    def select(self, rows: list[int]) -> None:
        self.batch.select(rows)

    def merge(self, other: _KV) -> None:
        self.batch.merge(other.batch)
