"""The contract every backend implements (a loaded model that runs generations)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .constraints import Constraint

from .generation import Generation
from .tools import ToolParser
from .vocabulary import ChatMessage, GenerationParams, ModelInfo


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
    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        """Tokens the prompt for these messages takes. Must be safe to call from any thread."""

    @abc.abstractmethod
    def run(self, sequences: list[Generation], admit: Callable[[int], list[Generation]]) -> None:
        """Generate for every sequence until each is finished (by push_token or finish).
        `admit(n)` returns up to n sequences that arrived since: a backend that batches takes
        them into the running batch (continuous batching); one that does not may ignore it,
        and they wait for the next call."""

    def generate(self, sequences: list[Generation]) -> None:
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

    def tools_refusal(self, messages: list[ChatMessage], params: GenerationParams) -> str | None:
        """Why this model cannot take the tools in `messages` with `params.tool_choice`
        (a client sees it in a 400), or None when it can."""
        return "this model has no tool-calling format on this server"

    def tool_parser(self, messages: list[ChatMessage], params: GenerationParams) -> ToolParser | None:
        """The parser of this sequence's answer when tools are offered (None: no tools)."""
        return None

    def tool_constraint(self, messages: list[ChatMessage], params: GenerationParams) -> Constraint | None:
        """What a forced call (`params.tool_choice`) constrains the answer to, on a backend that
        enforces it with its own grammar engine (None: nothing to add)."""
        return None
