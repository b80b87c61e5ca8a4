"""Live sync of answers across sockets and processes, through the channel layer.

The socket that asks for an answer reads its turn directly (chat.consumers.chat): its own
deltas never travel through the channel layer. This module serves everyone else: other tabs
of the same owner, on this process or another one sharing the layer, that follow the
conversation (`subscribe`, or the conversation a socket last asked in).

Every saved turn that a WebSocket starts or follows, or that the page's `/stream` fallback
runs, gets one *broadcaster*: a task, in the process that runs the turn, that tells the group
`conv.<uuid hex>` of its conversation about it. It lives as long as the turn, not as long as
any socket, so a second tab keeps receiving an answer after the tab that asked was closed.
A broadcaster sends the turn's text to the group only once someone follows it (a `turn.sync`
request, or a subscriber on its own process): a turn nobody else watches costs two layer
messages (`turn.start`, `turn.done`), not one per delta.

Messages to the group (all carry `turn_id`, `conversation_id`, `message_id`):

- `turn.start`; `turn.queued` (`position`, once followed);
- `turn.delta` (`offset`, `delta`), once followed: text from character `offset` on. Deltas
  that pile up while a send is in flight are coalesced into one, so a busy layer gets fewer,
  larger messages; the offset lets a reader drop what it already has and notice a gap;
- `turn.done` (`response`, `finish_reason`, `usage`, `error`): the whole answer, so a
  reader that missed anything ends with the right text.

A broadcaster also listens on a channel of its own, added to the same group, for requests
from sockets: `turn.sync` (`reply_to`: a channel name) is answered with a `turn.snapshot`
(`response`: the text so far) sent to that channel, which is how a follower catches up at
once (it asks on `turn.start`, on a gap, or when it subscribes mid-answer); `turn.stop`
cancels the turn (a reloaded page stopping an answer that a closed tab started). Only server
code sends to a group, and sockets join a group only after an ownership check, so these
requests need no other check.

`Follower` is the socket side: the chat consumer mixes it in to follow a conversation.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict

from channels.layers import get_channel_layer

from .consumers import frames
from .turns import QueuePosition, Turn, TurnDone, live_turn

log = logging.getLogger(__name__)

MAX_FOLLOWED_TURNS = 16

_broadcasts: dict[str, _Broadcaster] = {}  # by turn id; also keeps the tasks referenced


def group_name(conversation_id) -> str:
    """`conv.<32 hex digits>`: ASCII, well under the layers' 100-character limit."""
    return f"conv.{uuid.UUID(str(conversation_id)).hex}"


def turn_fields(turn: Turn) -> dict:
    return {"turn_id": turn.id, "conversation_id": turn.conversation_id, "message_id": turn.message_id}


def done_fields(turn_id: str, done: TurnDone) -> dict:
    """What a finished turn tells its readers: the `turn.done` message, and the asking socket's end frame."""
    result = done.result
    return {"turn_id": turn_id, "conversation_id": done.conversation_id, "message_id": done.message_id,
            "response": result.text, "finish_reason": result.finish_reason, "usage": result.usage(),
            "error": result.error}


def ensure_broadcast(turn: Turn, followed: bool = False) -> None:
    """Start the turn's broadcaster unless it runs already (or the turn is unsaved or over);
    `followed`: someone on this process follows it, so its text goes to the group from now on."""
    if turn.conversation_id is None or turn.finished:
        return
    broadcaster = _broadcasts.get(turn.id)
    if broadcaster is None:
        broadcaster = _broadcasts[turn.id] = _Broadcaster(turn)
        task = asyncio.get_running_loop().create_task(broadcaster.run(), name=f"broadcast-{turn.id}")
        broadcaster.task = task
        task.add_done_callback(lambda _: _broadcasts.pop(turn.id, None))
    if followed:
        broadcaster.follow()


async def request_sync(conversation_id, reply_to: str) -> None:
    """Ask the broadcaster of the conversation's live turn, wherever it runs, for a snapshot."""
    await _group_send(group_name(conversation_id), {"type": "turn.sync", "reply_to": reply_to})


async def stop(conversation_id) -> None:
    """Stop the conversation's live turn, here or on another process (or nowhere: nothing runs)."""
    turn = live_turn(conversation_id)
    if turn is not None:
        turn.cancel()
    else:
        await _group_send(group_name(conversation_id), {"type": "turn.stop"})


async def _group_send(group: str, message: dict, quiet: bool = False) -> bool:
    try:
        await get_channel_layer().group_send(group, message)
        return True
    except Exception:  # noqa: BLE001 - a layer outage must not break the turn or the socket
        log.log(logging.DEBUG if quiet else logging.WARNING, "channel layer: could not send %s to %s",
                message.get("type"), group, exc_info=not quiet)
        return False


class _Broadcaster:
    def __init__(self, turn: Turn):
        self.turn = turn
        self.task: asyncio.Task | None = None
        self.group = group_name(turn.conversation_id)
        self.fields = turn_fields(turn)
        self.changed = asyncio.Event()
        self.position: int | None = None
        self.followed = False
        self.sent = 0  # characters of the answer the group has been sent
        self.failed = False

    def follow(self) -> None:
        """From now on the text goes to the group; a follower has the text so far (a snapshot)."""
        if not self.followed:
            self.followed, self.sent = True, len(self.turn.text)
            self.changed.set()

    async def send(self, message: dict) -> None:
        """To the group; after a failure, later ones are logged quietly (one warning per turn)."""
        if not await _group_send(self.group, message, quiet=self.failed):
            self.failed = True

    async def watch(self) -> None:
        async for event in self.turn.events(replay=True):
            if isinstance(event, QueuePosition):
                self.position = event.position
            self.changed.set()

    async def run(self) -> None:
        layer = get_channel_layer()
        turn, fields = self.turn, self.fields
        watcher = asyncio.create_task(self.watch())
        listener = control = None
        try:
            try:
                # The consumers' own prefix: channels_redis has one receive loop per process that
                # pulls only the lock holder's prefix, so a channel with another prefix waited
                # (up to 5 s) until a consumer's channel happened to get a message.
                control = await layer.new_channel()
                await layer.group_add(self.group, control)
                listener = asyncio.create_task(self.listen(layer, control))
            except Exception:  # noqa: BLE001 - without requests we still broadcast
                log.warning("channel layer: no control channel for turn %s", turn.id, exc_info=True)
            await self.send({"type": "turn.start", **fields})
            announced = None
            while True:
                await self.changed.wait()
                self.changed.clear()
                if self.followed and self.position != announced and not turn.text and turn.done is None:
                    announced = self.position
                    await self.send({"type": "turn.queued", **fields, "position": announced})
                text = turn.text
                if self.followed and len(text) > self.sent:
                    sent, self.sent = self.sent, len(text)
                    await self.send({"type": "turn.delta", **fields, "offset": sent, "delta": text[sent:]})
                if turn.done is not None:
                    await self.send({"type": "turn.done", **done_fields(turn.id, turn.done)})
                    return
        except Exception:  # noqa: BLE001 - the turn goes on; its outcome is saved regardless
            log.exception("broadcast of turn %s failed", turn.id)
        finally:
            watcher.cancel()
            if listener is not None:
                listener.cancel()
            if control is not None:
                try:
                    await layer.group_discard(self.group, control)
                except Exception:  # noqa: BLE001
                    log.warning("channel layer: could not leave %s", self.group, exc_info=True)

    async def listen(self, layer, channel: str) -> None:
        turn = self.turn
        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - e.g. Redis went away: retry a little later
                log.warning("channel layer: receive failed for turn %s", turn.id, exc_info=True)
                await asyncio.sleep(1)
                continue
            kind = message.get("type")
            if kind == "turn.sync" and isinstance(message.get("reply_to"), str) and turn.done is None:
                # The snapshot and `follow()` see the same text: the group gets what comes after it.
                snapshot = {"type": "turn.snapshot", **self.fields, "response": turn.text}
                self.follow()
                try:
                    await layer.send(message["reply_to"], snapshot)
                except Exception:  # noqa: BLE001 - the socket may have gone; nothing to do
                    log.debug("could not answer a sync request for turn %s", turn.id, exc_info=True)
            elif kind == "turn.stop":
                turn.cancel()


class _Followed:
    """What a socket has sent of a turn it follows (one started elsewhere)."""

    def __init__(self):
        self.text = ""
        self.pending: dict[int, str] = {}  # deltas that arrived ahead of a gap, by offset
        self.sync_requested = False


class Follower:
    """Mixin for the chat consumer: following a conversation's turns that other sockets (or the
    page's `/stream` fallback) started. The consumer provides `send_json`, `channel_layer`,
    `channel_name` and `closing`, and calls `start_following()` when it connects."""

    conversation: str | None = None  # the conversation this socket follows

    def start_following(self) -> None:
        self.conversation = None
        self.followed: OrderedDict[str, _Followed] = OrderedDict()
        self.ignored: OrderedDict[str, None] = OrderedDict()  # this socket's own turns, and ended ones

    async def follow(self, conversation: str) -> bool:
        """Join the conversation's group (leaving the one followed before); False if the layer failed."""
        if conversation == self.conversation:
            return True
        await self.unfollow()
        try:
            await self.channel_layer.group_add(group_name(conversation), self.channel_name)
        except Exception:  # noqa: BLE001 - e.g. Redis is down: no live sync, the rest still works
            log.warning("channel layer: could not join a conversation's group", exc_info=True)
            return False
        self.conversation = conversation
        return True

    async def unfollow(self) -> None:
        if self.conversation is not None:
            try:
                await self.channel_layer.group_discard(group_name(self.conversation), self.channel_name)
            except Exception:  # noqa: BLE001
                log.warning("channel layer: could not leave a group", exc_info=True)
            self.conversation = None
            self.followed.clear()

    def ignore(self, turn_id: str) -> None:
        """Never follow this turn (the socket's own, which it reads directly, or one that ended)."""
        self.ignored[turn_id] = None
        while len(self.ignored) > MAX_FOLLOWED_TURNS:
            self.ignored.popitem(last=False)

    async def catch_up(self) -> None:
        """Pick up the followed conversation's live turn, if one runs: the text so far at once,
        then the rest as it comes."""
        turn = live_turn(self.conversation)
        if turn is None:
            await request_sync(self.conversation, self.channel_name)  # a turn on another process?
        elif turn.id not in self.ignored:
            ensure_broadcast(turn, followed=True)  # e.g. a turn started over SSE: make it visible to others too
            await self._advance({**turn_fields(turn), "type": "turn.snapshot"}, 0, turn.text)

    async def _followed_turn(self, message: dict) -> _Followed | None:
        """The state of the turn a group message is about, sending `start` at first contact."""
        turn_id = message.get("turn_id")
        if self.closing or turn_id in self.ignored or message.get("conversation_id") != self.conversation:
            return None
        state = self.followed.get(turn_id)
        if state is None:
            state = self.followed[turn_id] = _Followed()
            while len(self.followed) > MAX_FOLLOWED_TURNS:
                self.followed.popitem(last=False)
            await self.send_json(frames.start(None, message["conversation_id"], message.get("message_id")))
        return state

    async def _request_sync(self, state: _Followed) -> None:
        if not state.sync_requested:
            state.sync_requested = True
            await request_sync(self.conversation, self.channel_name)

    async def _advance(self, message: dict, offset: int, text: str) -> None:
        """Send the part of `text` (which starts at character `offset`) that this socket lacks."""
        state = await self._followed_turn(message)
        if state is None:
            return
        if offset > len(state.text):
            state.pending[offset] = text
            await self._request_sync(state)
            return
        while True:
            new = text[len(state.text) - offset:]
            if new:
                state.text += new
                await self.send_json(frames.delta(None, new, state.text, message["conversation_id"]))
            ready = [o for o in state.pending if o <= len(state.text)]
            if not ready:
                return
            offset = min(ready)
            text = state.pending.pop(offset)

    # -- group messages (channels calls `turn_start` for type `turn.start`, ...) ---------------

    async def turn_start(self, message):
        state = await self._followed_turn(message)
        if state is not None:
            await self._request_sync(state)  # the broadcaster sends the text once someone follows

    async def turn_queued(self, message):
        if await self._followed_turn(message) is not None:
            await self.send_json(frames.queued(None, message["position"], message["conversation_id"]))

    async def turn_delta(self, message):
        await self._advance(message, message["offset"], message["delta"])

    async def turn_snapshot(self, message):
        await self._advance(message, 0, message["response"])

    async def turn_done(self, message):
        await self._advance(message, 0, message["response"])
        if await self._followed_turn(message) is not None:
            self.followed.pop(message["turn_id"], None)
            self.ignore(message["turn_id"])
            await self.send_json(frames.end(None, message))

    async def turn_sync(self, message):
        """Requests meant for broadcasters; sockets in the group ignore them."""

    async def turn_stop(self, message):
        """See turn_sync."""
