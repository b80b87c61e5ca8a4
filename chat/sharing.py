"""Read-only links to a conversation: create (a snapshot of the current path), list, revoke.

Only the conversation's owner can create, list or revoke its links (`owned_by`: a foreign id
is the same 404 as an unknown one); anyone with a link's id can read its snapshot.
"""

from __future__ import annotations

import uuid

from django.db import transaction

from . import tree
from .errors import not_found
from .models import Conversation, Role, Share
from .owners import Owner

MAX_SHARES_PER_CONVERSATION = 20


def share_data(share: Share) -> dict:
    return {"id": share.id, "url": f"/s/{share.id}", "title": share.title,
            "created_at": share.created_at.isoformat(), "message_count": len(share.messages)}


def create_share(owner: Owner, conversation_id: uuid.UUID) -> Share:
    from .errors import ChatError

    with transaction.atomic():
        conversation = Conversation.objects.owned_by(owner).select_for_update().filter(pk=conversation_id).first()
        if conversation is None:
            raise not_found()
        path = [m for m in tree.current_path(conversation) if m.role in (Role.USER, Role.ASSISTANT, Role.TOOL)]
        if not path:
            raise ChatError("There is nothing to share yet: ask something first.", status=400,
                            type="invalid_request_error", param="conversation_id", code="empty_conversation")
        if conversation.shares.count() >= MAX_SHARES_PER_CONVERSATION:
            raise ChatError(f"A conversation can have at most {MAX_SHARES_PER_CONVERSATION} links; revoke one first.",
                            status=409, type="invalid_request_error", code="too_many_shares")
        return Share.objects.create(
            conversation=conversation, title=conversation.title, model=conversation.model,
            messages=[snapshot_of(m) for m in path],
        )


def snapshot_of(message) -> dict:
    """A message as a share keeps it; tool steps keep what the shared page shows of them."""
    data = {"role": message.role, "content": message.content, "finish_reason": message.finish_reason}
    if message.tool_calls:
        data["tool_calls"] = [{"name": c["name"], "arguments": c["arguments"]} for c in message.tool_calls]
    if message.role == Role.TOOL:
        data["tool_name"] = message.tool_name
    return data


def shares_of(owner: Owner, conversation_id: uuid.UUID) -> list[Share]:
    conversation = Conversation.objects.owned_by(owner).filter(pk=conversation_id).first()
    if conversation is None:
        raise not_found()
    return list(conversation.shares.all())


def revoke_share(owner: Owner, share_id: str) -> None:
    owned = Conversation.objects.owned_by(owner).values("pk")
    deleted, _ = Share.objects.filter(pk=share_id, conversation__in=owned).delete()
    if not deleted:
        raise not_found()


def public_share(share_id: str) -> Share | None:
    return Share.objects.filter(pk=share_id).first()
