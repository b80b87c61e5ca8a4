"""The engine's vocabulary: what callers ask (GenerationParams), what they get back
(events and the GenerationResult), the model's description, and the errors the engine reports.
Nothing here knows about HTTP, WebSocket or the ORM."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .constraints import Constraint

from .tools import ToolCall

FINISH_REASONS = ("stop", "length", "cancelled", "error")


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
    # Tool calling (the tools themselves travel in the messages: see tools.py). None: the model
    # decides; "required": it must call a tool; "function:NAME": it must call NAME.
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None  # None: several calls per answer allowed
    # OpenAI's penalties over the tokens generated so far: logit -= count * frequency_penalty
    # + (count > 0) * presence_penalty.
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    # Log probabilities of each generated token and of this many most likely alternatives
    # (0-20); None: none are computed.
    logprobs: int | None = None
    # What the output must match (response_format); see constraints.py.
    constraint: Constraint | None = None

    def as_dict(self) -> dict[str, Any]:
        """The non-default fields, for storage next to an answer (plain JSON)."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value in (None, ()):
                continue
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            elif hasattr(value, "as_dict"):
                value = value.as_dict()
            out[field.name] = value
        return out


# Chat messages are plain dicts {"role": "system"|"user"|"assistant", "content": str}; with
# tools, also "tool" messages and the keys described in tools.py.
ChatMessage = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class QueuePosition:
    """The request waits; `position` 1 means it is next."""

    position: int


@dataclasses.dataclass(frozen=True)
class Started:
    """The request left the queue and its prompt is being processed."""

    prompt_tokens: int


@dataclasses.dataclass(frozen=True)
class TopLogprob:
    """A candidate token of one step: its text, its exact bytes and its log probability."""

    token: str
    bytes: bytes
    logprob: float


@dataclasses.dataclass(frozen=True)
class TokenLogprob(TopLogprob):
    """A generated token (when GenerationParams.logprobs is set): the most likely candidates
    of its step, and where its text starts in the answer (characters)."""

    top: tuple[TopLogprob, ...] = ()
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class TextDelta:
    """New text: always whole Unicode characters, never a stop string. With logprobs asked
    for, `logprobs` are the tokens whose text this delta completes (a token whose text is
    held back comes with the delta that releases it; the tokens of a cut stop string never
    come). The last delta may have no text, only the logprobs of a token that ended the
    answer partly inside a stop string."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str  # one of FINISH_REASONS
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float | None = None  # seconds from start of generation to first delta
    duration: float = 0.0  # seconds from leaving the queue to the end
    error: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # the answer's calls (its text is what is not a call)
    logprobs: tuple[TokenLogprob, ...] | None = None  # every delta's, when asked for

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


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    model_id: str  # the id clients see (OpenAI `model`), e.g. "SmolLM2-135M-Instruct"
    backend: str  # "transformers", "chatglm", "openai", "fake"
    device: str  # "cpu", "cuda:0", or an upstream URL
    context_length: int
    dtype: str = ""
    quantize: int | None = None
    source: str = ""  # where the weights came from (a path, a cache), for the start log
    vocab_size: int | None = None  # token ids are 0..vocab_size-1 (logit_bias); None: unknown here
