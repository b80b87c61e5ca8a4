"""A browser's WebSocket is bound to the session it was opened with.

- Who a socket acts for is decided once, with every other caller, by chat.owners.socket_caller.
- Logging out ends the session at once: `chat.signals` sends `session.ended` to the group of
  that session (one group per session, named by a hash of its key so that the key itself never
  reaches the channel layer), and `SessionBoundSocket.session_ended` closes the socket (4401).
- `still_valid` re-reads the session before each turn, so a socket whose close message was
  lost (a channel layer down, another process) still stops acting for a session that ended, or
  whose user changed (a login cycles the session key; a password change voids its hash).
"""

from __future__ import annotations

import hashlib
import logging

from channels.auth import get_user
from django.conf import settings
from django.utils.module_loading import import_string

from .consumers import frames
from .errors import ChatError
from .owners import PAGE_SESSION_KEY, Owner, session_owner, unauthorized

log = logging.getLogger(__name__)

CLOSE_SESSION_ENDED = 4401


def session_group(session_key: str) -> str:
    return "browser-session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


async def still_valid(scope, owner: Owner) -> bool:
    """Whether the session the socket was opened with still stands for `owner`."""
    if not owner.is_person:
        return True
    session = scope.get("session")
    key = getattr(session, "session_key", None)
    if key is None:
        return False
    fresh = import_string(settings.SESSION_ENGINE).SessionStore(key)
    await fresh.aget(PAGE_SESSION_KEY)
    if fresh.session_key is None:
        return False  # flushed (logout), expired or deleted
    if owner.user_id is not None:
        user = await get_user({"session": fresh})  # checks the password hash, as each request does
        return user.is_authenticated and user.pk == owner.user_id
    try:
        return await session_owner(None, fresh, create=False) == owner
    except ChatError:  # CHATGLM_REQUIRE_LOGIN switched on meanwhile
        return False


class SessionBoundSocket:
    """Mixin for the chat consumer: the session's group, and closing when the session ends."""

    session_group_name: str | None = None

    async def join_session_group(self, owner: Owner) -> None:
        key = getattr(self.scope.get("session"), "session_key", None)
        if not owner.is_person or key is None:
            return
        try:
            await self.channel_layer.group_add(session_group(key), self.channel_name)
            self.session_group_name = session_group(key)
        except Exception:  # noqa: BLE001 - no layer: the per-turn check still ends the session
            log.warning("channel layer: could not join the session's group", exc_info=True)

    async def leave_session_group(self) -> None:
        if self.session_group_name is not None:
            try:
                await self.channel_layer.group_discard(self.session_group_name, self.channel_name)
            except Exception:  # noqa: BLE001
                log.warning("channel layer: could not leave the session's group", exc_info=True)
            self.session_group_name = None

    async def session_stands(self, owner: Owner, request_id=None) -> bool:
        """False, after closing the socket, if the session has ended: call before each turn
        (the error frame answers `request_id`, so the page shows it on that answer)."""
        if await still_valid(self.scope, owner):
            return True
        await self.session_ended({"request_id": request_id})
        return False

    async def session_ended(self, message) -> None:
        """Group message `session.ended` (logout), or a failed per-turn check."""
        if getattr(self, "closing", False):
            return
        self.closing = True
        error = unauthorized("The session has ended (logged out): reload the page.", code="session_ended")
        await self.send_json(frames.error(error, message.get("request_id")))
        await self.close(CLOSE_SESSION_ENDED)
