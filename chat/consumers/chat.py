"""The chat WebSocket (`/ws/chat/`): a thin adapter over `turns`, like the SSE views.

Connect (who the socket acts for: chat.owners.socket_caller), dispatch (`receive_json`) and
frames (chat.consumers.frames). Each generation runs in its own task, so `stop` and the
socket's own disconnect are seen while it streams (docs/pitfalls.md#consumer-task). Errors
are ChatError turned into `error` frames; the socket stays open except for abuse (a frame
flood past chat.throttle.frame_bucket: 4429) and a bad API key (4401). docs/websocket.md
describes the protocol.

Who the socket acts for decides what a disconnect does: a browser (session cookie: an
account or an anonymous visitor) keeps its answer going, saved when done, and any socket of
the same owner can `subscribe` to the conversation to pick up the stream; a program (API
key, or a caller of an open API) is like an SSE client: closing the socket stops its
generation, and what was produced is saved as cancelled.

Delivery: the socket that asked writes its turn's frames directly from the turn's events,
and stays out of the conversation's channel-layer group while its turn runs, so none of its
own deltas come back to it. Following the turns of other sockets is chat.live's `Follower`.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from .. import inputs, live, params, selectors, throttle
from ..errors import ChatError, invalid, not_found, unexpected_error
from ..owners import Owner, socket_caller
from ..turns import Protocol, QueuePosition, TextDelta, Turn, TurnDone, TurnInput, start_turn
from ..ws_session import SessionBoundSocket
from . import frames

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_MANY_FRAMES = 4429
MAX_REQUEST_ID_CHARS = 128


def max_frame_chars() -> int:
    return 2 * settings.CHATGLM["MAX_QUERY_CHARS"] + 4096


def _frame_error(message: str, code: str, param: str | None = None) -> ChatError:
    return ChatError(message, param=param, code=code)


class ChatConsumer(SessionBoundSocket, live.Follower, AsyncJsonWebsocketConsumer):
    owner: Owner | None = None

    # -- connection -------------------------------------------------------------------------

    async def connect(self):
        self.bucket = throttle.frame_bucket()
        self.closing = False
        self.turn: Turn | None = None
        self.request_id = None
        self.generation: asyncio.Task | None = None
        self.start_following()
        await self.accept()
        try:
            self.owner = await socket_caller(self.scope)
            await self.join_session_group(self.owner)  # a logout closes this socket
        except ChatError as error:
            self.closing = True
            await self.send_json(frames.error(error, None))
            await self.close(CLOSE_UNAUTHORIZED)

    async def disconnect(self, code):
        if self.generation is not None:
            self.generation.cancel()
        if self.turn is not None and not self.turn.finished and self.owner is not None and not self.owner.is_person:
            self.turn.cancel()  # a program that goes away stops its generation (a browser's goes on)
        await self.unfollow()
        await self.leave_session_group()

    # -- frames in ----------------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if self.closing or self.owner is None:
            return
        if not self.bucket.take():
            self.closing = True
            await self.send_json(frames.error(ChatError("Too many frames: slow down.", status=429,
                                                        type="rate_limit_error", code="rate_limited"), None))
            await self.close(CLOSE_TOO_MANY_FRAMES)
            return
        if text_data is None:
            return await self.send_json(frames.error(
                _frame_error("Send JSON text frames, not binary ones.", "invalid_frame"), None))
        try:  # size, depth, Unicode: the same checks as every HTTP body (chat.inputs)
            content = inputs.decode_json(text_data, max_chars=max_frame_chars(), what="frame")
        except ChatError as error:
            return await self.send_json(frames.error(error, None))
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        request_id = None  # echoed in an error frame only once it is valid
        try:
            if not isinstance(content, dict):
                raise _frame_error("A frame must be a JSON object.", "invalid_json")
            request_id = self._request_id(content)
            handler = {"chat": self.do_chat, "stop": self.do_stop, "subscribe": self.do_subscribe}.get(content.get("type"))
            if handler is None:
                raise _frame_error("'type' must be one of chat, stop, subscribe.", "unknown_type", "type")
            await handler(content, request_id)
        except ChatError as error:
            await self.send_json(frames.error(error, request_id))
        except Exception as exc:  # noqa: BLE001 - a bug must not close the socket with a traceback
            await self.send_json(frames.error(unexpected_error(exc, "websocket frame"), request_id))

    @staticmethod
    def _request_id(content: dict):
        value = content.get("request_id")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)) or len(str(value)) > MAX_REQUEST_ID_CHARS:
            raise invalid("request_id", f"'request_id' must be a string of at most {MAX_REQUEST_ID_CHARS} characters.",
                          "invalid_type")
        return value

    async def do_chat(self, content: dict, request_id) -> None:
        if not await self.session_stands(self.owner, request_id):
            return  # logged out (or the session expired) since the socket opened: closed
        if self.generation is not None:
            raise ChatError("This connection is already generating an answer: send 'stop' or wait for 'done'.",
                            status=409, code="generation_in_progress")
        # `parent_id` (tree.py): the message the new question follows (null: the root), or a
        # question whose answer is regenerated (then no `query`).
        branch = "parent_id" in content
        query = params.text(content, "query", required=not branch) or ""
        parent_id = params.message_id(content.get("parent_id"), "parent_id") if branch else None
        conversation_id = params.conversation_id(content.get("conversation_id"))
        raw = content.get("params")
        if raw is not None and not isinstance(raw, dict):
            raise invalid("params", "'params' must be an object.", "invalid_type")
        turn = await start_turn(TurnInput(
            owner=self.owner,
            protocol=Protocol.WEBSOCKET,
            query=query,
            params=params.generation_params(raw or {}, where="params."),
            conversation_id=conversation_id,
            parent_id=parent_id,
            branch=branch,
        ))
        self.turn, self.request_id = turn, request_id
        self.ignore(turn.id)
        if turn.conversation_id is not None:
            live.ensure_broadcast(turn)  # for the owner's other tabs
            await self.unfollow()  # this socket reads its own turn directly, not back from the group
        await self.send_json(frames.start(request_id, turn.conversation_id, turn.message_id,
                                          question_id=turn.user_message_id, history_truncated=turn.history_truncated))
        self.generation = asyncio.create_task(self._stream(turn, request_id), name=f"ws-{turn.id}")

    async def do_stop(self, content: dict, request_id) -> None:
        """Stop this socket's generation; without a request_id, the live answer of a conversation
        (`conversation_id`, else the followed one): a reloaded page stopping what a closed tab asked."""
        if self.generation is not None and self.turn is not None and request_id in (None, self.request_id):
            self.turn.cancel()
            return
        if request_id is not None:
            return  # a late stop for an answer that has ended: nothing to do
        conversation = self.conversation
        if content.get("conversation_id") is not None:
            conversation_id = params.conversation_id(content["conversation_id"])
            conversation = str(conversation_id)
            if conversation != self.conversation and not await self._owns(conversation_id):
                raise not_found()
        if conversation is not None:
            await live.stop(conversation)

    async def do_subscribe(self, content: dict, request_id) -> None:
        if not await self.session_stands(self.owner, request_id):
            return
        if content.get("conversation_id") is None:
            raise invalid("conversation_id", "'conversation_id' is required.", "missing")
        conversation_id = params.conversation_id(content.get("conversation_id"))
        if not await self._owns(conversation_id):
            raise not_found()
        conversation = str(conversation_id)
        if not await self.follow(conversation):
            raise ChatError("Live updates are unavailable right now; try again shortly.", status=503,
                            type="server_error", code="live_updates_unavailable")
        await self.send_json({"type": "subscribed", "request_id": request_id, "conversation_id": conversation})
        await self.catch_up()

    @database_sync_to_async
    def _owns(self, conversation_id: uuid.UUID) -> bool:
        return selectors.owns_conversation(self.owner, conversation_id)

    # -- this socket's own generation ---------------------------------------------------------

    async def _stream(self, turn: Turn, request_id) -> None:
        text = ""
        try:
            async for event in turn.events(replay=True):
                if isinstance(event, QueuePosition):
                    await self.send_json(frames.queued(request_id, event.position))
                elif isinstance(event, TextDelta):
                    text += event.text
                    await self.send_json(frames.delta(request_id, event.text, text))
                elif isinstance(event, TurnDone):
                    if self.generation is asyncio.current_task():
                        self.generation = None  # a `chat` sent right after `done` must be accepted
                    if event.conversation_id is not None:
                        # Follow the conversation again before `done`, so that the next turn,
                        # whichever tab asks it, finds this socket in the group.
                        await self.follow(event.conversation_id)
                    await self.send_json(frames.end(request_id, live.done_fields(turn.id, event)))
                    if event.conversation_id is not None and self.conversation == event.conversation_id:
                        await self.catch_up()  # a turn another tab started meanwhile
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the socket must hear that its answer ended
            try:
                await self.send_json(frames.error(unexpected_error(exc, f"websocket stream of turn {turn.id}"),
                                                  request_id))
            except Exception:  # noqa: BLE001 - the socket itself is gone
                pass
        finally:
            if self.generation is asyncio.current_task():
                self.generation = None
            if not self.owner.is_person:
                turn.cancel()  # no-op once done; stops a program's answer that nobody reads any more

    @classmethod
    async def encode_json(cls, content):
        return json.dumps(content, ensure_ascii=False)
