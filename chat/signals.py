"""Signal receivers of the chat app (connected in ChatConfig.ready)."""

from __future__ import annotations

import logging
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.dispatch import receiver

from .models import Conversation
from .owners import VISITOR_SESSION_KEY
from .ws_session import session_group

log = logging.getLogger(__name__)


@receiver(user_logged_in, dispatch_uid="chat.adopt_visitor_conversations")
def adopt_visitor_conversations(sender, request, user, **kwargs):
    """Give the anonymous visitor's conversations to the account they just logged in to.

    auth.login() has already cycled the session key but kept its data, so the visitor UUID
    is still there; it is removed afterwards, the account owning everything from now on.
    """
    session = getattr(request, "session", None)
    if session is None:
        return
    raw = session.pop(VISITOR_SESSION_KEY, None)
    if raw is None:
        return
    try:
        visitor = uuid.UUID(str(raw))
    except ValueError:
        return
    adopted = Conversation.objects.adopt(visitor, user)
    if adopted:
        log.info("user %s adopted %d anonymous conversation(s)", user.pk, adopted)


@receiver(user_logged_out, dispatch_uid="chat.close_sockets_of_the_session")
def close_sockets_of_the_session(sender, request, user, **kwargs):
    """Close the WebSockets opened with the session being logged out (chat.ws_session): the
    signal comes before the session is flushed, so its key still names the sockets' group."""
    key = getattr(getattr(request, "session", None), "session_key", None)
    layer = get_channel_layer()
    if key is None or layer is None:
        return
    try:
        async_to_sync(layer.group_send)(session_group(key), {"type": "session.ended"})
    except Exception:  # noqa: BLE001 - the logout itself must go on; each socket re-checks per turn
        log.warning("channel layer: could not close the sockets of a logged-out session", exc_info=True)
