"""Where the generation thread meets asyncio: admission queue, batching, cancellation.

One engine thread owns the model: it loads it, warms it up and runs every generation, so
torch never runs on two threads at once (docs/pitfalls.md#torch-threads: torch on a second thread halves its
speed, and OpenMP teams on two threads fight over two cores). Async callers submit a
request and read its events from an `asyncio.Queue` that the engine thread feeds with
`loop.call_soon_threadsafe` (about 4 µs an item, against 90 µs for `sync_to_async`), one call
for all the events that arrive before the loop runs (`_Outbox`).

The queue is bounded (`max_queue`): past it, `submit()` raises EngineOverloaded at once
instead of letting latency grow without end. It is also shared fairly: a request may name its
`owner` (an account, an API key, a client address), who may have at most `max_waiting_per_owner`
requests waiting (CHATGLM_MAX_QUEUED_PER_CLIENT, default a quarter of the queue), and the
waiting line is kept in round-robin order across owners (each owner's first waiting request,
then each one's second...), so one busy client cannot push everyone else to the back. A request whose caller goes away is cancelled
at the next decode step (Generation.push_token sees the flag), or removed from the queue if
it had not started.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable

from .backend import Backend
from .generation import Generation
from .vocabulary import (
    ChatMessage,
    EngineOverloaded,
    EngineUnavailable,
    Event,
    GenerationParams,
    GenerationResult,
    ModelInfo,
    QueuePosition,
)

log = logging.getLogger(__name__)


class _Outbox:
    """Events from the engine thread to one event loop, handed over in batches: a decode step
    of 200 rows makes one `call_soon_threadsafe` (one wake-up of the loop, one write to its
    self-pipe), not 200. The loop takes everything that arrived by the time it runs."""

    _by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._items: collections.deque = collections.deque()  # append/popleft are thread-safe
        self._scheduled = False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Outbox:
        outbox = cls._by_loop.get(loop)
        if outbox is None:
            with cls._lock:
                outbox = cls._by_loop.setdefault(loop, cls(loop))
        return outbox

    def put(self, queue: asyncio.Queue, event: Event) -> bool:
        """Queue `event` for `queue`; False if the loop is closed."""
        if self._loop.is_closed():
            return False
        self._items.append((queue, event))
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # closed meanwhile
                self._scheduled = False
                return False
        return True

    def _deliver(self) -> None:
        self._scheduled = False  # before draining: an event appended from now on schedules anew
        items = self._items
        while items:
            queue, event = items.popleft()
            queue.put_nowait(event)


class Request:
    """A submitted generation, as its async caller holds it."""

    _ids = itertools.count(1)

    def __init__(self, engine: Engine, messages: list[ChatMessage], params: GenerationParams, owner: str | None = None):
        self.id = next(self._ids)
        self.owner = owner
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._cancel = threading.Event()
        self.sequence = Generation(messages, params, self._emit_threadsafe, self._cancel)
        self.result: GenerationResult | None = None

    def _emit_threadsafe(self, event: Event) -> None:
        if not _Outbox.of(self._loop).put(self._events, event):  # the caller's loop is closed:
            self._cancel.set()  # nobody is listening any more

    def cancel(self) -> None:
        """Stop this request: at the next decode step, or now if it is still queued."""
        if not self._cancel.is_set():
            self._cancel.set()
            self._engine._drop_if_waiting(self)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    async def events(self) -> AsyncIterator[Event]:
        """Queue positions, Started, TextDeltas, then the GenerationResult. Cancels on exit."""
        try:
            while True:
                event = await self._events.get()
                yield event
                if isinstance(event, GenerationResult):
                    self.result = event
                    return
        finally:
            if self.result is None:
                self.cancel()


class Engine:
    """The process-wide model server. Create one with `get_engine()`."""

    def __init__(self, backend_factory: Callable[[], Backend], max_queue: int = 64,
                 max_waiting_per_owner: int | None = None):
        self._backend_factory = backend_factory
        self.max_queue = max_queue
        if max_waiting_per_owner is None:
            max_waiting_per_owner = max(1, max_queue // 4)
        self.max_waiting_per_owner = max_waiting_per_owner  # 0: no per-owner share
        self._backend: Backend | None = None
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: list[Request] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="chatglm-engine", daemon=True)
        self._thread.start()

    # -- caller side (event loop) -------------------------------------------------------------

    def wait_ready(self, timeout: float | None = None) -> ModelInfo:
        """Block until the model is loaded and warmed up; raise if loading failed."""
        if not self._ready.wait(timeout):
            raise EngineUnavailable("The model is still loading.")
        if self._load_error is not None:
            raise EngineUnavailable(f"The model failed to load: {self._load_error}") from self._load_error
        assert self._backend is not None
        return self._backend.info

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._load_error is None

    @property
    def state(self) -> str:
        """`loading`, `ready` or `failed`."""
        if not self._ready.is_set():
            return "loading"
        return "failed" if self._load_error is not None else "ready"

    @property
    def info(self) -> ModelInfo:
        return self.wait_ready()

    @property
    def backend(self) -> Backend:
        self.wait_ready()
        assert self._backend is not None
        return self._backend

    def queue_length(self) -> int:
        with self._cond:
            return len(self._waiting)

    def running_count(self) -> int:
        with self._cond:
            return len(self._running)

    def submit(self, messages: list[ChatMessage], params: GenerationParams, owner: str | None = None) -> Request:
        """Admit a request, or raise EngineOverloaded/EngineUnavailable at once.

        `owner` (any string; None: nobody in particular) gets a fair share of the queue."""
        if self._ready.is_set() and self._load_error is not None:
            raise EngineUnavailable(f"The model failed to load: {self._load_error}")
        if self._stopping:
            raise EngineUnavailable("The engine is shutting down.")
        if params.constraint is not None and self.ready:
            # UnsupportedConstraint: refused now (a 400), never run unconstrained. Before the
            # model is ready, a row whose constraint cannot be enforced ends as an error.
            self.backend.check_constraint(params.constraint)
        request = Request(self, messages, params, owner)
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise EngineOverloaded(retry_after=max(1, len(self._waiting) // 4))
            index = self._fair_place(owner)
            if index is None:
                raise EngineOverloaded(
                    f"You already have {self.max_waiting_per_owner} requests waiting for the model: "
                    "wait for one to start.",
                    retry_after=max(1, self.max_waiting_per_owner // 4),
                )
            self._waiting.insert(index, request)
            position = index + 1
            self._announce_positions(start=index + 1)
            self._cond.notify()
        if self._running and self._backend is not None:
            self._backend.wake()  # a running batch may take it now
        if position > 1 or self._running or not self._ready.is_set():
            request._emit_threadsafe(QueuePosition(position))
        return request

    async def stream(self, messages: list[ChatMessage], params: GenerationParams,
                     owner: str | None = None) -> AsyncIterator[Event]:
        """`async for event in engine.stream(...)`: the events of one request."""
        request = self.submit(messages, params, owner)
        async for event in request.events():
            yield event

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        return self.backend.count_prompt_tokens(messages)

    def clear_cache(self) -> None:
        """Queue a cache clear on the engine thread (torch calls stay on that thread)."""
        with self._cond:
            self._clear_requested = True
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _fair_place(self, owner: str | None) -> int | None:
        """Where a new request of `owner` goes in the waiting line (lock held), or None when the
        owner has its whole share waiting. The line is in rounds: a request that is its owner's
        k-th waiting one goes after every request that is the k-th (or earlier) of its own owner,
        so owners take turns. Requests of no owner (None) share one turn among them."""
        rank = sum(1 for r in self._waiting if r.owner == owner)
        if owner is not None and self.max_waiting_per_owner and rank >= self.max_waiting_per_owner:
            return None
        seen: collections.Counter = collections.Counter()
        for index, waiting in enumerate(self._waiting):
            if seen[waiting.owner] > rank:
                return index
            seen[waiting.owner] += 1
        return len(self._waiting)

    def _drop_if_waiting(self, request: Request) -> None:
        with self._cond:
            try:
                index = self._waiting.index(request)
            except ValueError:
                return
            del self._waiting[index]
            self._announce_positions(start=index)
        request.sequence.finish("cancelled")

    # -- engine thread ------------------------------------------------------------------------

    _clear_requested = False

    def _run(self) -> None:
        try:
            backend = self._backend_factory()
            started = time.monotonic()
            backend.load()
            backend.warmup()
            self._backend = backend
            info = backend.info
            log.info(
                "model %s ready on %s via %s in %.1f s (%s)",
                info.model_id, info.device, info.backend, time.monotonic() - started, info.source,
            )
        except BaseException as exc:  # noqa: BLE001 - reported to every caller
            log.exception("model failed to load")
            self._load_error = exc
            self._ready.set()
            self._fail_waiting(f"The model failed to load: {exc}")
            return
        self._ready.set()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._generate(backend, batch)

    def _next_batch(self) -> list[Request] | None:
        with self._cond:
            while not self._waiting and not self._stopping and not self._clear_requested:
                self._cond.wait()
            if self._clear_requested:
                self._clear_requested = False
                assert self._backend is not None
                self._backend.clear_cache()
                return []
            if self._stopping:
                return None
            size = max(1, self._backend.max_batch_size if self._backend else 1)
            batch = [self._waiting.popleft() for _ in range(min(size, len(self._waiting)))]
            self._running = batch
            self._announce_positions(start=0)
            return batch

    def _generate(self, backend: Backend, batch: list[Request]) -> None:
        def prepared(seq: Generation) -> Generation:
            seq.tool_parser = backend.tool_parser(seq.messages, seq.params)
            forced = backend.tool_constraint(seq.messages, seq.params)
            if forced is not None:  # a forced tool call: the answer is held to the call's grammar
                seq.params = dataclasses.replace(seq.params, constraint=forced)
            return seq

        live = [prepared(r.sequence) for r in batch if not r.cancelled]
        for request in batch:
            if request.cancelled:
                request.sequence.finish("cancelled")

        def admit(limit: int) -> list[Generation]:
            """Move up to `limit` waiting requests into the running batch."""
            with self._cond:
                taken = [self._waiting.popleft() for _ in range(min(max(0, limit), len(self._waiting)))]
                self._running.extend(taken)
                if taken:
                    self._announce_positions(start=0)
            fresh = []
            for request in taken:
                if request.cancelled:
                    request.sequence.finish("cancelled")
                else:
                    fresh.append(prepared(request.sequence))
            live.extend(fresh)
            return fresh

        try:
            if live:
                backend.run(list(live), admit)
        except Exception as exc:  # noqa: BLE001 - a failed generation must not stop the engine
            log.exception("generation failed")  # the details go to the log, not to clients
            for seq in live:
                seq.finish("error", error=f"the model failed ({type(exc).__name__})")
        finally:
            for seq in live:  # a backend that left a sequence unfinished must not hang its caller
                if not seq.finished:
                    seq.finish("cancelled") if seq.cancelled else seq.finish("error", error="generation ended early")
            with self._cond:
                self._running = []

    def _announce_positions(self, start: int) -> None:
        """Tell waiting requests from `start` on their new place in line (lock held)."""
        for index in range(start, len(self._waiting)):
            self._waiting[index]._emit_threadsafe(QueuePosition(index + 1))

    def _fail_waiting(self, message: str) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for request in waiting:
            request.sequence.finish("error", error=message)
