"""Reads of saved conversations, always through `owned_by`: what an owner may list or open.

Sync functions (views call them through `sync_to_async`, one thread hop per request);
unknown and foreign ids are the same `not_found()` so nobody learns another user's ids exist.
"""

from __future__ import annotations

import uuid

from django.db.models import Count, QuerySet

from .errors import not_found
from .models import Conversation, FinishReason, Message, Role
from .owners import Owner

PAGE_SIZE = 50


def conversation_page(owner: Owner, page: int = 1, search: str = "", per_page: int = PAGE_SIZE):
    """One page of the owner's conversations, newest activity first, and whether more follow."""
    conversations = Conversation.objects.owned_by(owner)
    if search:
        conversations = conversations.filter(title__icontains=search)
    conversations = conversations.annotate(message_count=Count("messages")).order_by("-updated_at", "-pk")
    start = (page - 1) * per_page
    rows = list(conversations[start : start + per_page + 1])  # one more row tells if a next page exists
    return rows[:per_page], len(rows) > per_page


def owned_conversation(owner: Owner, conversation_id: uuid.UUID) -> Conversation:
    """The owner's conversation with this id, or ChatError 404."""
    conversation = Conversation.objects.owned_by(owner).filter(pk=conversation_id).first()
    if conversation is None:
        raise not_found()
    return conversation


def messages_of(conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.order_by("position")


def answer_unfinished(conversation: Conversation) -> bool:
    """Whether the last answer is still marked generating (in this or another process)."""
    last = (
        conversation.messages.filter(role=Role.ASSISTANT).order_by("-position").values_list("finish_reason", flat=True).first()
    )
    return last == FinishReason.GENERATING


def conversations_for_export(conversations: QuerySet[Conversation]) -> QuerySet[Conversation]:
    """The conversations with their owners and messages fetched in two extra queries, not one per row."""
    return conversations.select_related("user").prefetch_related("messages")
