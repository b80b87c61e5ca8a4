"""The engine's vocabulary: generation parameters, events, results, and the Backend interface.

Nothing here knows about HTTP, WebSocket or the ORM. A backend turns chat messages into
tokens; a `Sequence` (one per request, owned by the scheduler) turns those tokens into
whole-character text deltas, applies stop strings and limits, and records the result.
"""

from __future__ import annotations

import abc
import codecs
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Sequence as SequenceABC
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .constraints import Constraint

from .tools import ToolCall, ToolParser

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
Message = dict[str, Any]


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
        # Set by the engine before generation when tools are offered (see Backend.tool_parser).
        self.tool_parser: ToolParser | None = None
        self.tool_calls: list[ToolCall] = []
        # Logprobs waiting for their token's text to be sent: (start, end, entry), in characters
        # of the answer, counted by decoding the tokens' bytes (see _feed). The text of a tool
        # call is never sent, so its tokens' logprobs are dropped (OpenAI's are the content's).
        self._lp_pending: list[tuple[int, int, TokenLogprob]] = []
        self._lp_sent: list[TokenLogprob] = []
        self._lp_utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._lp_chars = 0  # whole characters of the tokens so far
        self._lp_partial = 0  # 1 while the last token ends inside a character
        self._sent = 0  # characters sent
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

    def begin(self, prompt_tokens: int, decoder: Decoder | None, max_new_tokens: int) -> bool:
        """Record the prompt size, the decoder of token ids (None for a backend that pushes
        text) and the token budget left for the answer. With no budget left (the prompt fills
        the context or `max_length`) the sequence ends here ("length"): returns False."""
        self.started_at = time.monotonic()
        self.prompt_tokens = prompt_tokens
        self._decoder = decoder
        self.max_new_tokens = max(0, max_new_tokens)
        self._emit(Started(prompt_tokens))
        if self.max_new_tokens == 0:
            self.finish("length")
        return not self.finished

    def push_token(self, token_id: int, logprob: TokenLogprob | None = None) -> bool:
        """Account one generated token (and its logprobs, when asked for); return whether
        generation should go on."""
        if self.finished:
            return False
        assert self._decoder is not None, "begin() must come first"
        return self.push_text(self._decoder.push(token_id), logprobs=(logprob,) if logprob else ())

    def push_text(self, text: str, tokens: int = 1, logprobs: SequenceABC[TokenLogprob] = ()) -> bool:
        """Account `tokens` generated tokens that decoded to `text` (whole characters): the
        path of backends that receive text, such as an upstream server. Return whether
        generation should go on."""
        if self.finished:
            return False
        self.completion_tokens += tokens
        self._feed(text, logprobs)
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
            self._feed(self._decoder.flush())
            self._send(self._stop.flush())
            if self._stop.stopped:
                reason = "stop"
        if self.tool_parser is not None and reason != "error":
            text, calls = self.tool_parser.finish()
            self._send(text, parsed=True)
            self.tool_calls += calls
        if reason != "error":
            # A token whose text was partly sent and partly cut as a stop string still made
            # the answer: its logprob goes out (with no text); wholly cut ones are dropped.
            partial = [entry for start, _, entry in self._lp_pending if start < self._sent]
            if partial:
                self._lp_sent += partial
                self._emit(TextDelta("", tuple(partial)))
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
            tool_calls=tuple(self.tool_calls),
            logprobs=tuple(self._lp_sent) if self.params.logprobs is not None else None,
        )
        self._emit(self.result)

    def _feed(self, text: str, logprobs: SequenceABC[TokenLogprob] = ()) -> None:
        """Text of new tokens into the stop matcher, and the tokens' logprobs into the line of
        those waiting for their text to be sent. A token's place in the text is counted from
        its bytes (the text is their concatenation): a token that is part of a character ends
        with that character, so it goes out with the delta that completes it."""
        for entry in logprobs:
            start = self._lp_chars + self._lp_partial
            self._lp_chars += len(self._lp_utf8.decode(entry.bytes))
            self._lp_partial = 1 if self._lp_utf8.getstate()[0] else 0
            self._lp_pending.append((start, self._lp_chars + self._lp_partial, dataclasses.replace(entry, offset=start)))
        self._send(self._stop.feed(text))

    def _send(self, text: str, parsed: bool = False) -> None:
        if text and self.tool_parser is not None and not parsed:
            text = self.tool_parser.feed(text)  # what may be a tool call is held back
        if text:
            # Every answer is stored and sent as UTF-8: a lone surrogate (which a backend
            # passing text through may hand us) cannot be encoded, and PostgreSQL refuses NUL.
            text = _UNSTORABLE.sub("\ufffd", text)
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            self._parts.append(text)
            self._sent += len(text)
            released = ()
            if self._lp_pending and self._lp_pending[0][1] <= self._sent:
                count = next((i for i, (_, end, _) in enumerate(self._lp_pending) if end > self._sent),
                             len(self._lp_pending))
                released = tuple(entry for _, _, entry in self._lp_pending[:count])
                del self._lp_pending[:count]
                self._lp_sent += released
            self._emit(TextDelta(text, released))


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


class Backend(abc.ABC):
    """A loaded model. Every method but `info`/`count_prompt_tokens` runs on the engine thread.

    `run()` receives up to `max_batch_size` sequences at once; a backend that batches
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
    def run(self, sequences: list[Sequence], admit: Callable[[int], list[Sequence]]) -> None:
        """Generate for every sequence until each is finished (by push_token or finish).
        `admit(n)` returns up to n sequences that arrived since: a backend that batches takes
        them into the running batch (continuous batching); one that does not may ignore it,
        and they wait for the next call."""

    def generate(self, sequences: list[Sequence]) -> None:
        """A static batch: `run()` with nothing more to admit."""
        self.run(sequences, lambda limit: [])

    def wake(self) -> None:
        """Called from any thread when a request arrives while `run()` runs: a backend that
        sleeps between its own events (rather than stepping a batch) wakes up to `admit` it."""

    def token_budget(self, params: GenerationParams, prompt_tokens: int) -> int:
        """New tokens a sequence may generate, the same on every backend: `max_new_tokens` (or
        the backend's default), then the seed API's `max_length` (prompt + answer, as
        ChatGLM's `stream_chat` counts), then what the context has left after the prompt."""
        budget = params.max_new_tokens or self.default_max_new_tokens()
        if params.max_length:
            budget = min(budget, params.max_length - prompt_tokens)
        return min(budget, self.info.context_length - prompt_tokens)

    def check_constraint(self, constraint: Constraint) -> None:
        """Raise UnsupportedConstraint unless this backend can enforce `constraint` (a
        response_format). Called by Engine.submit on the caller's thread: must be thread-safe."""
        from .constraints import UnsupportedConstraint

        raise UnsupportedConstraint(f"The {self.info.backend} backend cannot constrain its output.")

    def clear_cache(self) -> None:
        """Free cached accelerator memory (the seed's /clear). A no-op on CPU."""

    def default_max_new_tokens(self) -> int:
        return 512

    def tools_refusal(self, messages: list[Message], params: GenerationParams) -> str | None:
        """Why this model cannot take the tools in `messages` with `params.tool_choice`
        (a client sees it in a 400), or None when it can."""
        return "this model has no tool-calling format on this server"

    def tool_parser(self, messages: list[Message], params: GenerationParams) -> ToolParser | None:
        """The parser of this sequence's answer when tools are offered (None: no tools)."""
        return None

    def tool_constraint(self, messages: list[Message], params: GenerationParams) -> Constraint | None:
        """What a forced call (`params.tool_choice`) constrains the answer to, on a backend that
        enforces it with its own grammar engine (None: nothing to add)."""
        return None
