"""The engine's vocabulary: generation parameters, events, results, and the Backend interface.

Nothing here knows about HTTP, WebSocket or the ORM. A backend turns chat messages into
tokens; a `Sequence` (one per request, owned by the scheduler) turns those tokens into
whole-character text deltas, applies stop strings and limits, and records the result.
"""

from __future__ import annotations

import abc
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Sequence as SequenceABC
from typing import Any, Protocol

FINISH_REASONS = ("stop", "length", "cancelled", "error")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # replaced by U+FFFD in generated text


class EngineError(Exception):
    """Base class of errors the engine reports to its callers."""


class EngineOverloaded(EngineError):
    """The admission queue is full: try again later (HTTP 429 / 503)."""

    def __init__(self, message: str = "The model is busy: the queue is full.", retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


class EngineUnavailable(EngineError):
    """The model could not be loaded or the engine has stopped."""


@dataclasses.dataclass(frozen=True)
class GenerationParams:
    """What a caller may ask of one generation. `None` means the backend's default."""

    max_new_tokens: int | None = None
    # The seed API's `max_length`: prompt + answer tokens, as ChatGLM's `stream_chat` counts.
    max_length: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The non-default fields, for storage next to an answer."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value not in (None, ()):
                out[field.name] = list(value) if isinstance(value, tuple) else value
        return out


# Chat messages are plain dicts {"role": "system"|"user"|"assistant", "content": str}.
Message = dict[str, str]


@dataclasses.dataclass(frozen=True)
class QueuePosition:
    """The request waits; `position` 1 means it is next."""

    position: int


@dataclasses.dataclass(frozen=True)
class Started:
    """The request left the queue and its prompt is being processed."""

    prompt_tokens: int


@dataclasses.dataclass(frozen=True)
class TextDelta:
    """New text: always whole Unicode characters, never a stop string."""

    text: str


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str  # one of FINISH_REASONS
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float | None = None  # seconds from start of generation to first delta
    duration: float = 0.0  # seconds from leaving the queue to the end
    error: str = ""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def usage(self) -> dict[str, int]:
        """Token counts in the OpenAI `usage` shape, which every protocol reports."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


Event = QueuePosition | Started | TextDelta | GenerationResult


class Decoder(Protocol):
    """Incremental token-ids-to-text decoder (see detokenize.py)."""

    def push(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


class StopMatcher:
    """Cuts the text at the first stop string, holding back any tail that could start one.

    Text is only released once it can no longer become part of a stop string, so a stop
    string never leaves the server, not even in part.
    """

    def __init__(self, stops: SequenceABC[str]):
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        if self.stopped:
            return ""
        self._pending += text
        cut = min((i for i in (self._pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._pending, self.stopped = self._pending[:cut], "", True
            return out
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self._pending)), 0, -1):
                if self._pending.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return out

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


class Sequence:
    """One request's generation as the backend sees it.

    The backend calls `begin()` once the prompt is tokenized, `push_token()` for each new
    token (it returns False when the sequence must end: stop string, token budget or
    cancellation), and `finish()` when it ends for its own reason (EOS, an error). Every
    path funnels into `finish()`, which emits exactly one GenerationResult.
    """

    def __init__(
        self,
        messages: list[Message],
        params: GenerationParams,
        emit: Callable[[Event], None],
        cancelled: threading.Event,
    ):
        self.messages = messages
        self.params = params
        self._emit = emit
        self._cancelled = cancelled
        self._decoder: Decoder | None = None
        self._stop = StopMatcher(params.stop)
        self._parts: list[str] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.max_new_tokens = 0
        self.started_at: float | None = None
        self.first_token_at: float | None = None
        self.finished = False
        self.result: GenerationResult | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def begin(self, prompt_tokens: int, decoder: Decoder | None, max_new_tokens: int) -> None:
        """Record the prompt size, the decoder of token ids (None for a backend that pushes
        text) and the token budget left for the answer."""
        self.started_at = time.monotonic()
        self.prompt_tokens = prompt_tokens
        self._decoder = decoder
        self.max_new_tokens = max(0, max_new_tokens)
        self._emit(Started(prompt_tokens))

    def push_token(self, token_id: int) -> bool:
        """Account one generated token; return whether generation should go on."""
        if self.finished:
            return False
        assert self._decoder is not None, "begin() must come first"
        return self.push_text(self._decoder.push(token_id))

    def push_text(self, text: str, tokens: int = 1) -> bool:
        """Account `tokens` generated tokens that decoded to `text` (whole characters): the
        path of backends that receive text, such as an upstream server. Return whether
        generation should go on."""
        if self.finished:
            return False
        self.completion_tokens += tokens
        self._send(self._stop.feed(text))
        if self._stop.stopped:
            self.finish("stop")
        elif self.cancelled:
            self.finish("cancelled")
        elif self.completion_tokens >= self.max_new_tokens:
            self.finish("length")
        return not self.finished

    def finish(self, reason: str, error: str = "") -> None:
        """End the sequence (idempotent); flushes held-back text unless it errored."""
        if self.finished:
            return
        assert reason in FINISH_REASONS, reason
        if self._decoder is not None and reason != "error":
            self._send(self._stop.feed(self._decoder.flush()))
            self._send(self._stop.flush())
            if self._stop.stopped:
                reason = "stop"
        self.finished = True
        now = time.monotonic()
        started = self.started_at if self.started_at is not None else now
        self.result = GenerationResult(
            text=self.text,
            finish_reason=reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            time_to_first_token=(self.first_token_at - started) if self.first_token_at else None,
            duration=now - started,
            error=error,
        )
        self._emit(self.result)

    def _send(self, text: str) -> None:
        if text:
            # Every answer is stored and sent as UTF-8: a lone surrogate (which a backend
            # passing text through may hand us) cannot be encoded, and PostgreSQL refuses NUL.
            text = _UNSTORABLE.sub("\ufffd", text)
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            self._parts.append(text)
            self._emit(TextDelta(text))


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    model_id: str  # the id clients see (OpenAI `model`), e.g. "SmolLM2-135M-Instruct"
    backend: str  # "transformers", "chatglm", "openai", "fake"
    device: str  # "cpu", "cuda:0", or an upstream URL
    context_length: int
    dtype: str = ""
    quantize: int | None = None
    source: str = ""  # where the weights came from (a path, a cache), for the start log


class Backend(abc.ABC):
    """A loaded model. Every method but `info`/`count_prompt_tokens` runs on the engine thread.

    `generate()` receives up to `max_batch_size` sequences at once; a backend that batches
    decodes them together, one that does not may leave `max_batch_size` at 1.
    """

    max_batch_size = 1

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights and tokenizer. Called once, on the engine thread."""

    def warmup(self) -> None:
        """Run a tiny generation so the first real request does not pay one-off costs."""

    @property
    @abc.abstractmethod
    def info(self) -> ModelInfo: ...

    @abc.abstractmethod
    def count_prompt_tokens(self, messages: list[Message]) -> int:
        """Tokens the prompt for these messages takes. Must be safe to call from any thread."""

    @abc.abstractmethod
    def generate(self, sequences: list[Sequence]) -> None:
        """Generate for every sequence until each is finished (by push_token or finish)."""

    def generate_continuous(self, sequences: list[Sequence], admit: Callable[[int], list[Sequence]]) -> None:
        """Like generate(), for a backend that can take new sequences into a running batch:
        `admit(n)` returns up to n sequences that arrived since (continuous batching). The
        default decodes a static batch; new arrivals wait for the next one."""
        self.generate(sequences)

    def clear_cache(self) -> None:
        """Free cached accelerator memory (the seed's /clear). A no-op on CPU."""

    def default_max_new_tokens(self) -> int:
        return 512
