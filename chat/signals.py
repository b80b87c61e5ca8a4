"""Signal receivers of the chat app (connected in ChatConfig.ready)."""

from __future__ import annotations

import logging
import uuid

from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver

from .models import Conversation
from .owners import VISITOR_SESSION_KEY

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
