"""Live sync of answers across sockets and processes, through the channel layer.

Every saved turn that a WebSocket starts or follows gets one *broadcaster*: a task, in the
process that runs the turn, that sends the turn's progress to the group `conv.<uuid hex>`
of its conversation. It lives as long as the turn, not as long as any socket, so a second
tab (on any process sharing the channel layer) keeps receiving an answer after the tab that
asked for it was closed.

Messages to the group (all carry `turn_id`, `conversation_id`, `message_id`):

- `turn.start`; `turn.queued` (`position`);
- `turn.delta` (`offset`, `delta`): text from character `offset` on. Deltas that pile up
  while a send is in flight are coalesced into one, so a busy layer gets fewer, larger
  messages; the offset lets a reader drop what it already has and notice a gap;
- `turn.done` (`response`, `finish_reason`, `usage`, `error`): the whole answer, so a
  reader that missed anything ends with the right text.

A broadcaster also listens on a channel of its own, added to the same group, for requests
from sockets: `turn.sync` (`reply_to`: a channel name) is answered with a `turn.snapshot`
(`response`: the text so far) sent to that channel, which is how a socket that subscribes
mid-answer on another process catches up at once; `turn.stop` cancels the turn (a reloaded
page stopping an answer that a closed tab started). Only server code sends to a group, and
sockets join a group only after an ownership check, so these requests need no other check.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from channels.layers import get_channel_layer

from .engine import QueuePosition
from .turns import Turn

log = logging.getLogger(__name__)

_broadcasts: dict[str, asyncio.Task] = {}  # by turn id; also keeps the tasks referenced


def group_name(conversation_id) -> str:
    """`conv.<32 hex digits>`: ASCII, well under the layers' 100-character limit."""
    return f"conv.{uuid.UUID(str(conversation_id)).hex}"


def turn_fields(turn: Turn) -> dict:
    return {"turn_id": turn.id, "conversation_id": turn.conversation_id, "message_id": turn.message_id}


def ensure_broadcast(turn: Turn) -> None:
    """Start the turn's broadcaster unless it runs already (or the turn is unsaved or over)."""
    if turn.conversation_id is None or turn.finished or turn.id in _broadcasts:
        return
    task = asyncio.get_running_loop().create_task(_broadcast(turn), name=f"broadcast-{turn.id}")
    _broadcasts[turn.id] = task
    task.add_done_callback(lambda _: _broadcasts.pop(turn.id, None))


async def request_sync(conversation_id, reply_to: str) -> None:
    """Ask the broadcaster of the conversation's live turn, wherever it runs, for a snapshot."""
    await _group_send(group_name(conversation_id), {"type": "turn.sync", "reply_to": reply_to})


async def request_stop(conversation_id) -> None:
    """Stop the conversation's live turn, wherever it runs."""
    await _group_send(group_name(conversation_id), {"type": "turn.stop"})


async def _group_send(group: str, message: dict, quiet: bool = False) -> bool:
    try:
        await get_channel_layer().group_send(group, message)
        return True
    except Exception:  # noqa: BLE001 - a layer outage must not break the turn or the socket
        log.log(logging.DEBUG if quiet else logging.WARNING, "channel layer: could not send %s to %s",
                message.get("type"), group, exc_info=not quiet)
        return False


async def _broadcast(turn: Turn) -> None:
    layer = get_channel_layer()
    group = group_name(turn.conversation_id)
    fields = turn_fields(turn)
    changed = asyncio.Event()
    position: list[int | None] = [None]

    async def watch() -> None:
        async for event in turn.events(replay=True):
            if isinstance(event, QueuePosition):
                position[0] = event.position
            changed.set()

    failed = [False]

    async def send(message: dict) -> None:
        """To the group; after a failure, later ones are logged quietly (one warning per turn)."""
        if not await _group_send(group, message, quiet=failed[0]):
            failed[0] = True

    watcher = asyncio.create_task(watch())
    listener = None
    control = None
    try:
        try:
            control = await layer.new_channel(prefix="turn")
            await layer.group_add(group, control)
            listener = asyncio.create_task(_listen(layer, control, turn, fields))
        except Exception:  # noqa: BLE001 - without requests we still broadcast
            log.warning("channel layer: no control channel for turn %s", turn.id, exc_info=True)
        await send({"type": "turn.start", **fields})
        sent, announced = 0, None
        while True:
            await changed.wait()
            changed.clear()
            if position[0] != announced and not sent and turn.done is None:
                announced = position[0]
                await send({"type": "turn.queued", **fields, "position": announced})
            text = turn.text
            if len(text) > sent:
                await send({"type": "turn.delta", **fields, "offset": sent, "delta": text[sent:]})
                sent = len(text)
            if turn.done is not None:
                result = turn.done.result
                await send({
                    "type": "turn.done", **fields, "response": result.text,
                    "finish_reason": result.finish_reason, "usage": result.usage(), "error": result.error,
                })
                return
    except Exception:  # noqa: BLE001 - the turn goes on; its outcome is saved regardless
        log.exception("broadcast of turn %s failed", turn.id)
    finally:
        watcher.cancel()
        if listener is not None:
            listener.cancel()
        if control is not None:
            try:
                await layer.group_discard(group, control)
            except Exception:  # noqa: BLE001
                log.warning("channel layer: could not leave %s", group, exc_info=True)


async def _listen(layer, channel: str, turn: Turn, fields: dict) -> None:
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
        if kind == "turn.sync" and isinstance(message.get("reply_to"), str):
            try:
                await layer.send(message["reply_to"], {"type": "turn.snapshot", **fields, "response": turn.text})
            except Exception:  # noqa: BLE001 - the socket may have gone; nothing to do
                log.debug("could not answer a sync request for turn %s", turn.id, exc_info=True)
        elif kind == "turn.stop":
            turn.cancel()
