"""Reads of saved conversations, always through `owned_by`: what an owner may list or open.

Sync functions (views call them through `sync_to_async`, one thread hop per request);
unknown and foreign ids are the same `not_found()` so nobody learns another user's ids exist.
"""

from __future__ import annotations

import contextlib
import time
import uuid

import dataclasses
from typing import TYPE_CHECKING

from django.db import connection, transaction
from django.db.models import Count, QuerySet

from . import tree
from .errors import invalid, not_found
from .models import Conversation, FinishReason, Message, Role
from .owners import Owner

if TYPE_CHECKING:
    from .turns import TurnInput

Pair = tuple[str, str]

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


def owns_conversation(owner: Owner, conversation_id: uuid.UUID) -> bool:
    return Conversation.objects.owned_by(owner).filter(pk=conversation_id).exists()


def latest_answer(owner: Owner, conversation_id: uuid.UUID, message_id: int) -> tuple[bool, int | None]:
    """Whether `message_id` is a message of the owner's conversation, and the id of that
    conversation's latest answer (what a continuation of it follows)."""
    conversation = Conversation.objects.owned_by(owner).filter(pk=conversation_id).first()
    if conversation is None or not conversation.messages.filter(pk=message_id).exists():
        return False, None
    latest = conversation.messages.filter(role=Role.ASSISTANT).order_by("-position").values_list("pk", flat=True)
    return True, latest.first()


def turn_history(inp: TurnInput) -> tuple[Conversation, list[Pair], TurnInput]:
    """For a turn in a saved conversation: the conversation, the history on the path the turn
    continues, and the input with its parent resolved (and, for a regenerated answer, the
    question it answers again)."""
    conversation = owned_conversation(inp.owner, inp.conversation_id)
    messages = tree.by_id(conversation.messages.only("id", "parent_id", "position", "role", "content", "tool_calls",
                                                     "tool_call_id", "tool_name"))
    if not inp.branch:
        parent = tree.leaf_id(conversation, messages)
        return conversation, tree.pairs(tree.path_to(messages, parent)), dataclasses.replace(inp, parent_id=parent)
    parent = inp.parent_id
    if parent is not None and parent not in messages:
        raise invalid("parent_id", "'parent_id' is not a message of this conversation.", "not_found")
    if parent is not None and messages[parent].role == Role.USER:  # regenerate this question's answer
        if inp.query:
            raise invalid("query", "Leave 'query' empty when 'parent_id' names a question: its answer is regenerated.",
                          "unexpected")
        question = messages[parent]
        history = tree.pairs(tree.path_to(messages, question.parent_id))
        return conversation, history, dataclasses.replace(inp, query=question.content)
    if not inp.query or not inp.query.strip():
        raise invalid("query", "'query' is required.", "missing")
    # An empty (failed) answer as the parent can still be followed; it is left out of the history.
    return conversation, tree.pairs(tree.path_to(messages, parent)), inp


def history_of(conversation: Conversation) -> list[Pair]:
    """(question, answer) pairs on the conversation's current path."""
    return tree.pairs(tree.current_path(conversation))


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


class QueryTooSlow(Exception):
    """A read ran past its time budget and was stopped by the database."""


@contextlib.contextmanager
def time_budget(seconds: float):
    """Stop the queries run inside after `seconds` (SQLite: a progress handler; PostgreSQL: a
    statement timeout), raising QueryTooSlow. A scan that nobody waits for any more must not
    go on for minutes: the database does not notice that the client has left."""
    from django.db import OperationalError

    try:
        if connection.vendor == "postgresql":
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL statement_timeout = %s", [max(1, int(seconds * 1000))])
                yield
                # Inside an outer transaction this block is a savepoint, and a SET LOCAL outlives
                # a released savepoint: give the rest of that transaction its timeout back.
                cursor.execute("SET LOCAL statement_timeout = DEFAULT")
        elif connection.vendor == "sqlite":
            # No transaction: an IMMEDIATE one (settings.py) would hold the write lock meanwhile.
            connection.ensure_connection()
            deadline = time.monotonic() + seconds
            connection.connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
            try:
                yield
            finally:
                connection.connection.set_progress_handler(None, 0)
        else:
            yield
    except OperationalError as exc:
        raise QueryTooSlow(str(exc)) from exc
