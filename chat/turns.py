"""One chat turn, shared by every protocol: history in, engine stream, persistence out.

`start_turn()` checks ownership, reads the saved history (chat.selectors), trims it to fit,
admits the request to the engine, saves the user's message (before any token is generated)
and a placeholder for the answer (chat.services), and starts a runner task that owns the
generation from then on. The runner has the answer saved when it ends (completed, cancelled
or failed), whoever is listening: an SSE client that disconnects cancels the turn, a browser WebSocket that closes
does not, and either way the outcome is stored. Adapters read `turn.events()`: the events so
far, then live ones, so a second tab or a reloaded page can attach mid-answer.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import logging
import uuid
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.conf import settings

from . import selectors, services, throttle, tree
from .engine import (
    EngineOverloaded,
    EngineUnavailable,
    GenerationParams,
    GenerationResult,
    QueuePosition,
    TextDelta,
    UnsupportedConstraint,
    get_engine,
)
from .claims import BUSY, LIMIT, shared_claims
from .errors import GENERATION_TIMEOUT, NOT_SAVED, SERVER_SHUTDOWN, ChatError, invalid, model_unavailable, turn_in_progress
from .metrics import TurnWatch
from .models import Source
from .upstream_health import health_fields
from .owners import Owner

log = logging.getLogger(__name__)

Pair = tuple[str, str]


class Protocol(enum.Enum):
    """The adapter a turn arrives through; with the owner it decides the turn's source and storage."""

    SEED = Source.API  # /chat, /stream
    WEBSOCKET = Source.WEBSOCKET
    OPENAI = Source.OPENAI


@dataclasses.dataclass
class TurnInput:
    owner: Owner
    protocol: Protocol
    query: str
    params: GenerationParams = GenerationParams()
    history: list[Pair] | None = None  # given by the client (seed API); None with a conversation
    conversation_id: uuid.UUID | None = None
    system_prompt: str | None = None  # None: the conversation's own (if any)
    store: bool = True  # False: the client asked not to store it (OpenAI's `store: false`)
    # Where the turn hangs in the conversation's tree (see chat/tree.py). branch=False: after
    # the current leaf (the seed and OpenAI APIs, a plain question). branch=True: under
    # `parent_id` (None: at the root): an edited question names the parent of the question it
    # replaces; a question's own id regenerates its answer (then `query` is left empty).
    parent_id: int | None = None
    branch: bool = False
    # Tool calling (chat/engine/tools.py): the tools offered, and the answer's steps so far
    # (assistant tool calls and tool results after `query`) when the turn continues after them.
    tools: list[dict] = dataclasses.field(default_factory=list)
    steps: list[dict] = dataclasses.field(default_factory=list)
    # What the protocol calls the output format (params.constraint), for a 400 that names it.
    format_param: str = "response_format"

    @property
    def source(self) -> str:
        """Where the conversation came from: a person's turns are the page's, whatever the protocol."""
        return Source.WEB if self.owner.is_person else self.protocol.value

    @property
    def stored(self) -> bool:
        """A person's turns are always saved; a program's unless CHATGLM_STORE_API_TURNS=0 (or it asked not to)."""
        return self.store and (self.owner.is_person or settings.CHATGLM["STORE_API_TURNS"])


@dataclasses.dataclass(frozen=True)
class TurnDone:
    """The last event of a turn: the engine's result plus where it was stored."""

    result: GenerationResult
    conversation_id: str | None
    message_id: int | None


# The events adapters read from `Turn.events()`, imported from here (adapters do not import the
# engine): QueuePosition (`position` in the queue), TextDelta (`text`), then TurnDone.
TurnEvent = QueuePosition | TextDelta | TurnDone

_live_turns: dict[str, Turn] = {}  # by conversation id: for re-attaching
_runner_tasks: set[asyncio.Task] = set()  # keep references: the loop holds tasks only weakly
_shutting_down = False  # set by shut_down(): no new turns, running ones end as errors


class _Claim:
    """A turn's hold on its conversation (one answer at a time) and on one of its owner's
    running slots. Checked and taken with no `await` in between, so that concurrent requests
    cannot all pass the checks before any of them registers; released when the turn ends or
    fails to start. Counted per process, and with REDIS_URL across processes too."""

    conversations: set[str] = set()
    running: collections.Counter = collections.Counter()

    def __init__(self, owner: Owner, conversation_id: str | None):
        limit = settings.CHATGLM["MAX_RUNNING_PER_USER"]
        busy = conversation_id is not None and conversation_id in self.conversations
        over = owner.is_person and limit and self.running[owner] >= limit
        # With REDIS_URL, every process's claims are checked too (chat/claims.py).
        self.shared, self.token = shared_claims(), ""
        if self.shared is not None and not busy and not over:
            verdict, self.token = self.shared.acquire(owner, conversation_id, limit if owner.is_person else 0)
            busy, over = verdict == BUSY, verdict == LIMIT
        if busy:
            raise turn_in_progress()
        if over:
            raise ChatError(
                f"You already have {limit} answers being generated; wait for one to finish or stop it.",
                status=429, type="rate_limit_error", code="too_many_running", retry_after=5,
            )
        self.client_slot = throttle.running_slot(owner)  # anonymous sessions count per address too
        self.owner, self.conversation_id, self.held = owner, None, True
        self.running[owner] += 1
        self.hold(conversation_id)

    def hold(self, conversation_id: str | None) -> None:
        if conversation_id is not None:
            self.conversation_id = conversation_id
            self.conversations.add(conversation_id)
            if self.token and conversation_id:
                self.shared.hold(self.token, conversation_id)

    def release(self) -> None:
        if self.held:
            self.held = False
            self.client_slot.release()
            self.running[self.owner] -= 1
            if self.running[self.owner] <= 0:
                del self.running[self.owner]
            self.conversations.discard(self.conversation_id)
            if self.token:
                self.shared.release(self.token)


class Turn:
    """A running (or finished) turn. Read it with `events()`; stop it with `cancel()`."""

    def __init__(self, inp: TurnInput, history: list[Pair], history_truncated: int, request, claim: _Claim):
        self.id = uuid.uuid4().hex
        self.input = inp
        self.owner = inp.owner
        self.query = inp.query
        self.history = history  # the whole history, as returned to seed clients
        self.history_truncated = history_truncated
        self.conversation_id: str | None = None
        self.user_message_id: int | None = None
        self.message_id: int | None = None
        self.text = ""  # everything generated so far (a replaying reader may be behind it)
        self.done: TurnDone | None = None
        self._request = request
        self._claim = claim
        self._log: list[TurnEvent] = []
        self._waiters: list[asyncio.Future] = []  # readers waiting for the next event

    def cancel(self) -> None:
        """Stop generating (at the next decode step); what was produced is kept, as cancelled."""
        if self.done is None:
            self._request.cancel()

    @property
    def finished(self) -> bool:
        return self.done is not None

    async def outcome(self) -> TurnDone:
        """Wait for the end of the turn (a non-streamed answer); a client that goes away
        meanwhile cancels it, so nothing is generated for nobody."""
        try:
            async for event in self.events():
                if isinstance(event, TurnDone):
                    return event
        finally:
            self.cancel()
        raise AssertionError("a turn's events end with TurnDone")

    async def events(self, replay: bool = True, idle: float | None = None) -> AsyncIterator[TurnEvent]:
        """Every event of the turn from the start (or from now), until TurnDone.

        A reader that fell behind gets what piled up coalesced: consecutive TextDeltas as one
        (their text joined: still whole characters, and the concatenation is unchanged), and
        of consecutive QueuePositions only the last. So a slow client, or a loop busy with
        hundreds of streams, sends fewer, larger events instead of falling further behind.
        With `idle`, IDLE is yielded whenever `idle` seconds pass with nothing new.
        """
        index = 0 if replay else len(self._log)
        timer = _IdleTimer(idle) if idle else None
        try:
            while True:
                if index == len(self._log):
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    if timer is not None:
                        timer.wait_on(waiter)
                    if not await waiter:  # woken by the idle timer, not by an event
                        yield IDLE
                        continue
                batch = self._log[index:]
                index += len(batch)
                for event in _coalesce(batch):
                    yield event
                    if isinstance(event, TurnDone):
                        return
        finally:
            if timer is not None:
                timer.cancel()

    def _publish(self, event: TurnEvent) -> None:
        if isinstance(event, TextDelta):
            self.text += event.text
        self._log.append(event)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():  # a reader that was cancelled while waiting
                waiter.set_result(True)

    async def _run(self) -> None:
        result = None
        watch = TurnWatch(self.input.source)  # metrics (chat/metrics.py)
        idle = settings.CHATGLM["GENERATION_TIMEOUT"] or None  # seconds without progress: a hung model
        try:
            events = self._request.events()
            while result is None:
                try:
                    async with asyncio.timeout(idle):
                        event = await anext(events)
                except TimeoutError:
                    self._request.cancel()
                    result = GenerationResult(text=self.text, finish_reason="error", error=GENERATION_TIMEOUT)
                    break
                if isinstance(event, GenerationResult):
                    result = event
                elif isinstance(event, TextDelta):
                    watch.delta()
                    self._publish(event)
                elif isinstance(event, QueuePosition):
                    self._publish(event)
                # (the engine's Started is progress for the timeout above; no reader needs it)
        except asyncio.CancelledError:
            self._request.cancel()
            raise
        finally:
            if result is None:  # cancelled from outside: record what was produced
                result = (GenerationResult(text=self.text, finish_reason="error", error=SERVER_SHUTDOWN)
                          if _shutting_down else GenerationResult(text=self.text, finish_reason="cancelled"))
            if self.message_id is not None:
                try:
                    await sync_to_async(services.save_answer)(self.message_id, result)
                except Exception:  # noqa: BLE001 - the turn must still end for its listeners
                    log.exception("could not save the answer of turn %s", self.id)
                    result = dataclasses.replace(result, finish_reason="error", error=NOT_SAVED)  # clients are told
            if self.conversation_id is not None and _live_turns.get(self.conversation_id) is self:
                del _live_turns[self.conversation_id]
            self._claim.release()
            watch.done(result, self.id)
            self.done = TurnDone(result, self.conversation_id, self.message_id)
            self._publish(self.done)


IDLE = object()  # yielded by Turn.events(idle=...) after a silence (SSE sends a keep-alive)


def _coalesce(batch: list[TurnEvent]) -> list[TurnEvent]:
    """The events of `batch` with each run of TextDeltas joined into one and each run of
    QueuePositions reduced to its last."""
    out: list[TurnEvent] = []
    run: list[TextDelta] = []
    for event in batch:
        if isinstance(event, TextDelta):
            run.append(event)
            continue
        if run:
            out.append(_joined(run))
            run = []
        if isinstance(event, QueuePosition) and out and isinstance(out[-1], QueuePosition):
            out[-1] = event
        else:
            out.append(event)
    if run:
        out.append(_joined(run))
    return out


def _joined(run: list[TextDelta]) -> TextDelta:
    """One delta of a run: the texts joined, and their logprobs, in order."""
    if len(run) == 1:
        return run[0]
    return TextDelta("".join(d.text for d in run), tuple(e for d in run for e in d.logprobs))


class _IdleTimer:
    """Wakes a reader whose wait for the next event has lasted `interval` seconds.

    One timer per interval and reader, re-armed only when it fires, however many events pass
    meanwhile: a timeout around every wait (asyncio.timeout, wait_for) would cost a timer per
    event, which at hundreds of streams costs more than the events themselves.
    """

    def __init__(self, interval: float):
        self.loop = asyncio.get_running_loop()
        self.interval = interval
        self.waiter: asyncio.Future | None = None
        self.since = self.loop.time()
        self.handle = self.loop.call_at(self.since + interval, self._fire)

    def wait_on(self, waiter: asyncio.Future) -> None:
        self.waiter, self.since = waiter, self.loop.time()

    def _fire(self) -> None:
        now = self.loop.time()
        waiting = self.waiter is not None and not self.waiter.done()
        if waiting and now >= self.since + self.interval - 0.001:
            self.waiter.set_result(False)  # wake the reader with "nothing came"
            self.since = now
        elif not waiting:
            self.since = now  # the reader is busy: measure its next wait from here on
        self.handle = self.loop.call_at(self.since + self.interval, self._fire)

    def cancel(self) -> None:
        self.handle.cancel()


async def shut_down(timeout: float, grace: float = 0.0) -> None:
    """For a server that is stopping: refuse new turns, let the running ones finish for up to
    `grace` s (CHATGLM_SHUTDOWN_GRACE), then end the rest now, each saved and reported to its
    listeners as an error (`server_shutdown`), waiting up to `timeout` s for that."""
    global _shutting_down
    _shutting_down = True
    tasks = list(_runner_tasks)
    if tasks and grace > 0:
        await asyncio.wait(tasks, timeout=grace)
    tasks = [task for task in tasks if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


def live_turn(conversation_id: str) -> Turn | None:
    """The turn generating in this conversation in this process, if any."""
    return _live_turns.get(str(conversation_id))


def running_turns(owner: Owner) -> int:
    return _Claim.running[owner]


async def ready_engine():
    """The engine, once its model is loaded (waiting off the event loop); 503 if it cannot be."""
    engine = get_engine()
    if not engine.ready:
        try:
            await asyncio.to_thread(engine.wait_ready, 600)
        except EngineUnavailable as exc:
            raise model_unavailable(str(exc)) from exc
    return engine


async def served_model():
    """The loaded model's info (`model_id`, `context_length`, ...), waiting while it loads; 503
    if it cannot be loaded."""
    return (await ready_engine()).info


def engine_status() -> dict:
    """The one view of the engine that pages and /healthz need: `ready`, `state`, `queue`,
    `running`, and once ready the model's fields and the upstream's reachability."""
    engine = get_engine()
    status = {"ready": engine.ready, "state": engine.state, "queue": engine.queue_length()}
    if engine.ready:
        info = engine.info
        status.update(running=engine.running_count(), model=info.model_id, backend=info.backend, device=info.device,
                      dtype=info.dtype, quantize=info.quantize, context_length=info.context_length,
                      health=health_fields(engine))
    return status


async def tools_refusal(messages: list[dict], params: GenerationParams) -> str | None:
    """Why the loaded model cannot serve these offered tools (and tool choice), or None."""
    return (await ready_engine()).backend.tools_refusal(messages, params)


def clear_engine_cache() -> None:
    """Free cached accelerator memory (the seed API's /clear); a no-op on CPU."""
    get_engine().clear_cache()


async def measure_context(system_prompt: str, pairs: list[Pair], params: GenerationParams) -> dict:
    """How much of the context the next turn after `pairs` would use (tokenized off the event loop)."""
    engine = await ready_engine()
    pairs = readable_history(engine, pairs)

    def measure():
        whole = engine.count_prompt_tokens(to_messages(system_prompt, pairs, ""))
        sent, truncated = fit_history(engine, system_prompt, pairs, "", params)
        return whole, engine.count_prompt_tokens(sent), truncated

    whole, sent, truncated = await asyncio.to_thread(measure)
    context = engine.info.context_length
    return {
        "prompt_tokens": whole,  # the whole current path, before any is left out
        "sent_tokens": sent,  # what the next request sends (before the new question)
        "context_length": context,
        "answer_room": min(params.max_new_tokens or 512, context // 4),
        "history_pairs": len(pairs),
        "max_history": max(0, settings.CHATGLM["MAX_HISTORY"]),
        "history_truncated": truncated,
    }


async def start_turn(inp: TurnInput) -> Turn:
    """Admit and start a turn, or raise ChatError (404 conversation, 429 overload, 503...)."""
    if _shutting_down:
        raise ChatError("The server is shutting down; try again shortly.", status=503, type="server_error",
                        code=SERVER_SHUTDOWN, retry_after=5)
    await throttle.check_turn(inp.owner, new_conversation=inp.conversation_id is None and inp.stored)
    engine = await ready_engine()

    conversation = None
    if inp.conversation_id is not None:
        conversation, history, inp = await sync_to_async(selectors.turn_history)(inp)
    else:
        if inp.branch:
            raise invalid("parent_id", "'parent_id' needs a 'conversation_id'.", "missing")
        history = list(inp.history or [])
    claim = _Claim(inp.owner, str(conversation.id) if conversation else None)  # no await since the read
    try:
        turn = await _begin(engine, inp, conversation, history, claim)
    except BaseException:
        claim.release()
        raise
    task = asyncio.get_running_loop().create_task(turn._run(), name=f"turn-{turn.id}")
    _runner_tasks.add(task)
    task.add_done_callback(_runner_tasks.discard)
    return turn


async def _begin(engine, inp: TurnInput, conversation, history: list[Pair], claim: _Claim) -> Turn:
    """Fit the prompt, admit it to the engine and save the question: the claimed part of a start."""
    system_prompt = inp.system_prompt if inp.system_prompt is not None else (conversation.system_prompt if conversation else "")
    # Tokenizing a long history takes a while: off the event loop, which serves every stream.
    messages, truncated = await asyncio.to_thread(fit_history, engine, system_prompt, readable_history(engine, history),
                                                  inp.query, inp.params, inp.tools, inp.steps)
    try:
        request = engine.submit(messages, inp.params, owner=throttle.queue_owner(inp.owner))
    except EngineOverloaded as exc:
        raise ChatError(str(exc), status=429, type="rate_limit_error", code="overloaded", retry_after=exc.retry_after) from exc
    except EngineUnavailable as exc:
        raise model_unavailable(str(exc)) from exc
    except UnsupportedConstraint as exc:  # about the client's own schema: said as it is
        raise invalid(inp.format_param, str(exc), "unsupported_format") from exc

    turn = Turn(inp, history, truncated, request, claim)
    if inp.stored:
        try:
            ids = await sync_to_async(services.save_question)(inp, conversation, history, system_prompt, engine.info.model_id, truncated)
        except BaseException:
            request.cancel()
            raise
        turn.conversation_id, turn.user_message_id, turn.message_id = ids
        claim.hold(turn.conversation_id)
        _live_turns[turn.conversation_id] = turn
    return turn


def readable_history(engine, history: list[Pair]) -> list[Pair]:
    """The history as this model can read it: earlier tool steps as they were for a backend
    with a tool-calling format, else written out as plain text in their answers (a turn on a
    tool conversation continued by the seed API, the page or /v1/responses must not fail
    because its model cannot take `tool` messages)."""
    if all(isinstance(answer, str) for _, answer in history):
        return history
    if engine.backend.tools_refusal([{"role": "system", "content": "", "tools": []}], GenerationParams()) is None:
        return history
    return [(question, tree.as_plain_text(answer)) for question, answer in history]


def fit_history(engine, system_prompt: str, history: list[Pair], query: str, params: GenerationParams,
                tools: list[dict] = (), steps: list[dict] = ()):
    """Chat messages for the model, and how many of the oldest pairs were left out.

    Keeps the most recent pairs, at most CHATGLM_MAX_HISTORY of them, such that the prompt
    (as the backend's own `count_prompt_tokens` counts it: chat template, system prompt and
    all) plus the room kept for the answer fits the limit (see `answer_room`). The most pairs
    that fit are found by bisection: a few tokenizations, not one per pair dropped. The query
    itself is never trimmed.
    """
    limit, room = answer_room(engine, params)
    max_pairs = max(0, settings.CHATGLM["MAX_HISTORY"])
    candidates = history[max(0, len(history) - max_pairs) :] if max_pairs else []

    def fits(count: int) -> bool:
        kept = candidates[len(candidates) - count :] if count else []
        return engine.count_prompt_tokens(to_messages(system_prompt, kept, query, tools, steps)) + room <= limit

    count = len(candidates)
    if count and not fits(count):
        low, high = 0, count  # low: 0 or a count that fits; high: a count that does not
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        count = low
    kept = candidates[len(candidates) - count :] if count else []
    return to_messages(system_prompt, kept, query, tools, steps), len(history) - len(kept)


def answer_room(engine, params: GenerationParams) -> tuple[int, int]:
    """(limit, room): the tokens a prompt and its answer may take together (the context, or
    the seed API's `max_length` if smaller), and how many of them history must leave free
    for the answer: its token budget (`max_new_tokens`, else the backend's default), capped at
    a quarter of the limit so that a large `max_tokens` does not push out all history. The
    backend's own budget (limit minus the prompt) then lets such an answer grow past it."""
    limit = engine.info.context_length
    if params.max_length:
        limit = min(limit, params.max_length)
    budget = params.max_new_tokens or engine.backend.default_max_new_tokens()
    return limit, min(budget, limit // 4)


def to_messages(system_prompt: str, history: list[Pair], query: str, tools: list[dict] = (),
                steps: list[dict] = ()) -> list[dict]:
    """Engine chat messages. An answer with tool calls is its steps (engine messages); offered
    tools ride on the system message (chat/engine/tools.py)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    if tools:
        if not messages:
            messages.append({"role": "system", "content": ""})
        messages[0]["tools"] = list(tools)
    for question, answer in history:
        messages.append({"role": "user", "content": question})
        messages += [{"role": "assistant", "content": answer}] if isinstance(answer, str) else answer
    messages.append({"role": "user", "content": query})
    return messages + list(steps)
