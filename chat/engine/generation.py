"""One request's generation as a backend drives it: tokens in, whole-character deltas
out, stop strings and the token budget applied, exactly one result at the end."""

from __future__ import annotations

import codecs
import dataclasses
import re
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence as SequenceABC
from typing import Protocol

from .stop import StopMatcher
from .tools import ToolCall, ToolParser
from .vocabulary import (
    FINISH_REASONS,
    ChatMessage,
    Event,
    GenerationParams,
    GenerationResult,
    Started,
    TextDelta,
    TokenLogprob,
)

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # replaced by U+FFFD in generated text


class Decoder(Protocol):
    """Incremental token-ids-to-text decoder (see detokenize.py)."""

    def push(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


class Generation:
    """One request's generation as the backend sees it.

    The backend calls `begin()` once the prompt is tokenized, `push_token()` for each new
    token (it returns False when the sequence must end: stop string, token budget or
    cancellation), and `finish()` when it ends for its own reason (EOS, an error). Every
    path funnels into `finish()`, which emits exactly one GenerationResult.
    """

    def __init__(
        self,
        messages: list[ChatMessage],
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
