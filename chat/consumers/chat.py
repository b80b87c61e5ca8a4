"""The chat WebSocket (`/ws/chat/`): a thin adapter over `turns`, like the SSE views.

`receive_json` only dispatches. Each generation runs in its own task, so `stop` and the
socket's own disconnect are seen while it streams (PITFALLS #9). Errors are ChatError
turned into `error` frames; the socket stays open except for abuse (a frame flood: 4429)
and a bad API key (4401). docs/websocket.md describes the protocol.

Who the socket acts for decides what a disconnect does: a browser (session cookie: an
account or an anonymous visitor) keeps its answer going, saved when done, and any socket of
the same owner can `subscribe` to the conversation to pick up the stream; a program (API
key, or a caller of an open API) is like an SSE client: closing the socket stops its
generation, and what was produced is saved as cancelled.

Delivery: the socket that asked reads its turn's events directly; every other socket
following the conversation (same process or another one sharing the channel layer) gets
the group messages of `chat.live`. A socket drops group messages about its own turns, and
uses the character offsets of the others to never send a piece of text twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from .. import inputs, live, params
from ..engine import QueuePosition, TextDelta
from ..errors import ChatError, generation_error, invalid, not_found, unexpected_error
from ..models import Conversation, Source
from ..owners import Owner, api_key_name, api_keys, bearer_token
from ..turns import Turn, TurnDone, TurnInput, live_turn, start_turn
from ..ws_session import SessionBoundSocket, socket_owner

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_MANY_FRAMES = 4429
FRAME_RATE = 20.0  # frames per second, sustained
FRAME_BURST = 40  # frames accepted at once before the rate applies
MAX_REQUEST_ID_CHARS = 128
MAX_FOLLOWED_TURNS = 16


class TokenBucket:
    """`rate` tokens a second, up to `burst`; `take()` is False when the bucket is empty."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _Followed:
    """What this socket has sent of a turn it follows (one started elsewhere)."""

    def __init__(self):
        self.text = ""
        self.pending: dict[int, str] = {}  # deltas that arrived ahead of a gap, by offset
        self.sync_requested = False


def max_frame_chars() -> int:
    return 2 * settings.CHATGLM["MAX_QUERY_CHARS"] + 4096


def _frame_error(message: str, code: str, param: str | None = None) -> ChatError:
    return ChatError(message, param=param, code=code)


class ChatConsumer(SessionBoundSocket, AsyncJsonWebsocketConsumer):
    owner: Owner | None = None

    # -- connection -------------------------------------------------------------------------

    async def connect(self):
        self.bucket = TokenBucket(FRAME_RATE, FRAME_BURST)
        self.closing = False
        self.turn: Turn | None = None
        self.request_id = None
        self.generation: asyncio.Task | None = None
        self.conversation: str | None = None  # the conversation this socket follows
        self.followed: OrderedDict[str, _Followed] = OrderedDict()
        self.ignored: OrderedDict[str, None] = OrderedDict()  # turn ids not to take from the group
        await self.accept()
        try:
            self.owner = await self._authenticate()
            await self.join_session_group(self.owner)  # a logout closes this socket
        except ChatError as error:
            self.closing = True
            await self.send_json({"type": "error", "request_id": None, "error": error.as_dict()})
            await self.close(CLOSE_UNAUTHORIZED)

    async def _authenticate(self) -> Owner:
        """The owner, from `?api_key=` / `Authorization: Bearer`, else the session (see module doc)."""
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        headers = dict(self.scope.get("headers", []))
        presented = (query.get("api_key") or [None])[0]
        if presented is None and b"authorization" in headers:
            presented = bearer_token(headers[b"authorization"].decode("latin-1"))
        if presented is not None:
            if not api_keys():
                return Owner(open_api=True)  # an open API ignores keys, like the HTTP APIs
            name = api_key_name(presented)
            if name is None:
                raise ChatError("Invalid API key.", status=401, type="authentication_error", code="invalid_api_key")
            return Owner(api_key=name)
        return await socket_owner(self.scope)  # a browser: its session (chat.ws_session)

    async def disconnect(self, code):
        if self.generation is not None:
            self.generation.cancel()
        if self.turn is not None and not self.turn.finished and self.owner is not None and not self.owner.is_person:
            self.turn.cancel()  # a program that goes away stops its generation (a browser's goes on)
        await self._leave()
        await self.leave_session_group()

    # -- frames in ----------------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if self.closing or self.owner is None:
            return
        if not self.bucket.take():
            self.closing = True
            await self._send_error(ChatError("Too many frames: slow down.", status=429,
                                              type="rate_limit_error", code="rate_limited"), None)
            await self.close(CLOSE_TOO_MANY_FRAMES)
            return
        if text_data is None:
            return await self._send_error(_frame_error("Send JSON text frames, not binary ones.", "invalid_frame"), None)
        try:  # size, depth, Unicode: the same checks as every HTTP body (chat.inputs)
            content = inputs.decode_json(text_data, max_chars=max_frame_chars(), what="frame")
        except ChatError as error:
            return await self._send_error(error, None)
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
            await self._send_error(error, request_id)
        except Exception as exc:  # noqa: BLE001 - a bug must not close the socket with a traceback
            await self._send_error(unexpected_error(exc, "websocket frame"), request_id)

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
        query = params.text(content, "query")
        conversation_id = params.conversation_id(content.get("conversation_id"))
        raw = content.get("params")
        if raw is not None and not isinstance(raw, dict):
            raise invalid("params", "'params' must be an object.", "invalid_type")
        inp = TurnInput(
            owner=self.owner,
            source=Source.WEB if self.owner.is_person else Source.WEBSOCKET,
            query=query,
            params=params.generation_params(raw or {}, where="params."),
            conversation_id=conversation_id,
            store=settings.CHATGLM["STORE_API_TURNS"] or self.owner.is_person,
        )
        turn = await start_turn(inp)
        self.turn, self.request_id = turn, request_id
        self._ignore(turn.id)
        if turn.conversation_id is not None:
            live.ensure_broadcast(turn)
            await self._follow(turn.conversation_id)  # this socket streams its own turn even if this fails
        await self.send_json({"type": "start", "request_id": request_id,
                              "conversation_id": turn.conversation_id, "message_id": turn.message_id})
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
            turn = live_turn(conversation)
            if turn is not None:
                turn.cancel()
            else:
                await live.request_stop(conversation)  # running on another process, or not at all

    async def do_subscribe(self, content: dict, request_id) -> None:
        if not await self.session_stands(self.owner, request_id):
            return
        if content.get("conversation_id") is None:
            raise invalid("conversation_id", "'conversation_id' is required.", "missing")
        conversation_id = params.conversation_id(content.get("conversation_id"))
        if not await self._owns(conversation_id):
            raise not_found()
        conversation = str(conversation_id)
        if not await self._follow(conversation):
            raise ChatError("Live updates are unavailable right now; try again shortly.", status=503,
                            type="server_error", code="live_updates_unavailable")
        await self.send_json({"type": "subscribed", "request_id": request_id, "conversation_id": conversation})
        turn = live_turn(conversation)
        if turn is not None and turn.id not in self.ignored:
            live.ensure_broadcast(turn)  # e.g. a turn started over SSE: make it visible to others too
            await self._advance({**live.turn_fields(turn), "type": "turn.snapshot"}, 0, turn.text)
        elif turn is None:
            await live.request_sync(conversation, self.channel_name)  # a turn on another process?

    @database_sync_to_async
    def _owns(self, conversation_id: uuid.UUID) -> bool:
        return Conversation.objects.owned_by(self.owner).filter(pk=conversation_id).exists()

    # -- this socket's own generation ---------------------------------------------------------

    async def _stream(self, turn: Turn, request_id) -> None:
        text = ""
        try:
            async for event in turn.events(replay=True):
                if isinstance(event, QueuePosition):
                    await self.send_json({"type": "queued", "request_id": request_id, "position": event.position})
                elif isinstance(event, TextDelta):
                    text += event.text
                    await self.send_json({"type": "delta", "request_id": request_id, "delta": event.text,
                                          "response": text})
                elif isinstance(event, TurnDone):
                    if self.generation is asyncio.current_task():
                        self.generation = None  # a `chat` sent right after `done` must be accepted
                    await self.send_json(self._end_frame(request_id, {
                        "turn_id": turn.id, "conversation_id": event.conversation_id, "message_id": event.message_id,
                        "response": event.result.text, "finish_reason": event.result.finish_reason,
                        "usage": event.result.usage(), "error": event.result.error,
                    }))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the socket must hear that its answer ended
            try:
                await self._send_error(unexpected_error(exc, f"websocket stream of turn {turn.id}"), request_id)
            except Exception:  # noqa: BLE001 - the socket itself is gone
                pass
        finally:
            if self.generation is asyncio.current_task():
                self.generation = None
            if not self.owner.is_person:
                turn.cancel()  # no-op once done; stops a program's answer that nobody reads any more

    @staticmethod
    def _end_frame(request_id, done: dict) -> dict:
        """`done`, or `error` (typed by chat.errors) when the model failed; the partial answer is kept."""
        fields = {"conversation_id": done["conversation_id"], "message_id": done["message_id"]}
        if done["finish_reason"] == "error":
            error = generation_error(done.get("error") or "", done.get("turn_id"))
            return {"type": "error", "request_id": request_id, "error": error.as_dict(),
                    "response": done["response"], **fields}
        return {"type": "done", "request_id": request_id, "response": done["response"],
                "finish_reason": done["finish_reason"], "usage": done["usage"], **fields}

    # -- following a conversation (group messages from chat.live) -----------------------------

    async def _follow(self, conversation: str) -> bool:
        """Join the conversation's group (leaving the one followed before); False if the layer failed."""
        if conversation == self.conversation:
            return True
        await self._leave()
        try:
            await self.channel_layer.group_add(live.group_name(conversation), self.channel_name)
        except Exception:  # noqa: BLE001 - e.g. Redis is down: no live sync, the rest still works
            log.warning("channel layer: could not join a conversation's group", exc_info=True)
            return False
        self.conversation = conversation
        return True

    async def _leave(self) -> None:
        if self.conversation is not None:
            try:
                await self.channel_layer.group_discard(live.group_name(self.conversation), self.channel_name)
            except Exception:  # noqa: BLE001
                log.warning("channel layer: could not leave a group", exc_info=True)
            self.conversation = None
            self.followed.clear()

    def _ignore(self, turn_id: str) -> None:
        self.ignored[turn_id] = None
        while len(self.ignored) > MAX_FOLLOWED_TURNS:
            self.ignored.popitem(last=False)

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
            await self.send_json({"type": "start", "request_id": None, "conversation_id": message["conversation_id"],
                                  "message_id": message.get("message_id")})
        return state

    async def _advance(self, message: dict, offset: int, text: str) -> None:
        """Send the part of `text` (which starts at character `offset`) that this socket lacks."""
        state = await self._followed_turn(message)
        if state is None:
            return
        if offset > len(state.text):
            state.pending[offset] = text
            if not state.sync_requested:
                state.sync_requested = True
                await live.request_sync(self.conversation, self.channel_name)
            return
        while True:
            new = text[len(state.text) - offset:]
            if new:
                state.text += new
                await self.send_json({"type": "delta", "request_id": None, "delta": new, "response": state.text,
                                      "conversation_id": message["conversation_id"]})
            ready = [o for o in state.pending if o <= len(state.text)]
            if not ready:
                return
            offset = min(ready)
            text = state.pending.pop(offset)

    async def turn_start(self, message):
        await self._followed_turn(message)

    async def turn_queued(self, message):
        if await self._followed_turn(message) is not None:
            await self.send_json({"type": "queued", "request_id": None, "position": message["position"],
                                  "conversation_id": message["conversation_id"]})

    async def turn_delta(self, message):
        await self._advance(message, message["offset"], message["delta"])

    async def turn_snapshot(self, message):
        await self._advance(message, 0, message["response"])

    async def turn_done(self, message):
        await self._advance(message, 0, message["response"])
        if await self._followed_turn(message) is not None:
            self.followed.pop(message["turn_id"], None)
            self._ignore(message["turn_id"])
            await self.send_json(self._end_frame(None, message))

    async def turn_sync(self, message):
        """Requests meant for broadcasters (chat.live); sockets in the group ignore them."""

    async def turn_stop(self, message):
        """See turn_sync."""

    # -- frames out ---------------------------------------------------------------------------

    async def _send_error(self, error: ChatError, request_id) -> None:
        frame = {"type": "error", "request_id": request_id, "error": error.as_dict()}
        if error.retry_after:
            frame["retry_after"] = error.retry_after
        await self.send_json(frame)

    @classmethod
    async def encode_json(cls, content):
        return json.dumps(content, ensure_ascii=False)
