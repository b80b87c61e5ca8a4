"""Find an owner's conversations by title and by what was said in them.

Message text is searched through the index of migration 0004: PostgreSQL full-text search
(`to_tsvector('simple', content) @@ to_tsquery`, every word as a prefix; Chinese, Japanese and Korean
queries scan, as the parser does not split those scripts into words), SQLite FTS5 with trigrams
(any substring of three or more characters; shorter queries scan with LIKE), and a plain
case-insensitive scan elsewhere. Each hit names the message, so the page can open the
conversation at it, and carries a snippet with the match's offsets for highlighting.
"""

from __future__ import annotations

import dataclasses
import re

from django.db import connection
from django.db.models.expressions import RawSQL

from .models import Conversation, Message
from .owners import Owner

MAX_RESULTS = 30
SNIPPET_CHARS = 160
_SCAN = 400  # matching messages read to find MAX_RESULTS distinct conversations


@dataclasses.dataclass
class Hit:
    conversation: Conversation
    message_id: int | None  # None: the title matched
    role: str
    snippet: str
    highlight: tuple[int, int] | None  # [start, end) of the match in `snippet`


_FTS_BATCH = 2000
# Scripts written without spaces between words: PostgreSQL's parser sees a whole run of them
# as one word, so full-text search cannot find a part of it; such queries scan instead.
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_ROW_FIELDS = ("id", "role", "content", "position", "conversation")


def _uses_fts(query: str) -> bool:
    return connection.vendor == "sqlite" and len(query) >= 3 and _has_fts()


def _matching_messages(query: str):
    """Messages matching `query` (PostgreSQL full-text, else a scan); the SQLite index is read
    in batches by `_message_batches` instead."""
    messages = Message.objects.all()
    words = re.findall(r"\w+", query)
    if connection.vendor == "postgresql" and words and not _UNSPACED.search(query):
        # Every word, as a prefix ("pomegranate" finds "pomegranates"); \w+ words carry no
        # tsquery syntax.
        tsquery = " & ".join(f"{word}:*" for word in words)
        return messages.filter(pk__in=RawSQL(
            "SELECT id FROM chat_message WHERE to_tsvector('simple', content) @@ to_tsquery('simple', %s)", [tsquery]))
    if _uses_fts(query):
        return messages.filter(pk__in=RawSQL("SELECT rowid FROM chat_message_fts WHERE chat_message_fts MATCH %s",
                                             [_phrase(query)]))
    return messages.filter(content__icontains=query)


def _phrase(query: str) -> str:
    return '"' + query.replace('"', '""') + '"'  # one FTS5 string: no query syntax from users


def _message_batches(query: str, owned):
    """The owner's matching messages, newest first, in batches. Through the SQLite index: the
    newest matches first (FTS5 walks its doclists by rowid, so a common word costs one batch,
    not a pass over every match), each batch filtered to the owner; elsewhere, one query."""
    if not _uses_fts(query):
        yield list(_matching_messages(query).filter(conversation__in=owned.values("pk")).select_related("conversation")
                   .only(*_ROW_FIELDS).order_by("-conversation__updated_at", "-position")[:_SCAN])
        return
    below, seen = None, set()
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT rowid FROM chat_message_fts WHERE chat_message_fts MATCH %s"
                + (" AND rowid < %s" if below is not None else "") + " ORDER BY rowid DESC LIMIT %s",
                [_phrase(query), *([below] if below is not None else []), _FTS_BATCH],
            )
            ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            return
        below = ids[-1]
        # By primary key, then the owner's among them (a join on the owner's conversations here
        # makes SQLite scan them for every batch); only the newest match of each conversation
        # not seen yet is loaded.
        newest: dict = {}
        for pk, conversation_id in Message.objects.filter(pk__in=ids).order_by("-pk").values_list("pk", "conversation_id"):
            if conversation_id not in seen:
                newest.setdefault(conversation_id, pk)
        mine = set(owned.filter(pk__in=newest).values_list("pk", flat=True))
        seen.update(newest)
        chosen = [pk for conversation_id, pk in newest.items() if conversation_id in mine]
        yield list(Message.objects.filter(pk__in=chosen).select_related("conversation").only(*_ROW_FIELDS).order_by("-pk"))
        if len(ids) < _FTS_BATCH:
            return


def _has_fts() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM sqlite_master WHERE name = 'chat_message_fts'")
        return cursor.fetchone() is not None


def snippet(text: str, query: str) -> tuple[str, tuple[int, int] | None]:
    """About SNIPPET_CHARS of `text` around the first match of `query` (case-insensitive)."""
    flat = " ".join(text.split())
    at = flat.lower().find(query.lower())
    if at < 0:
        # Full-text matched a word (not the query as typed): show the first query word found.
        for word in query.split():
            at = flat.lower().find(word.lower())
            if at >= 0:
                query = word
                break
    if at < 0:
        return flat[:SNIPPET_CHARS], None
    start = max(0, at - SNIPPET_CHARS // 3)
    end = min(len(flat), start + SNIPPET_CHARS)
    prefix = "…" if start else ""
    suffix = "…" if end < len(flat) else ""
    begin = at - start + len(prefix)
    return prefix + flat[start:end] + suffix, (begin, begin + len(query))


def search(owner: Owner, query: str, limit: int = MAX_RESULTS) -> list[Hit]:
    """Conversations matching `query`, newest activity first: the title, else the newest
    matching message of each."""
    owned = Conversation.objects.owned_by(owner)
    hits: dict = {}
    for conversation in owned.filter(title__icontains=query).order_by("-updated_at")[:limit]:
        text, span = snippet(conversation.title, query)
        hits[conversation.pk] = Hit(conversation, None, "", text, span)
    found = 0  # conversations with a matching message
    for batch in _message_batches(query, owned):
        for message in batch:
            hit = hits.get(message.conversation_id)
            if hit is not None and hit.message_id is not None:
                continue  # this conversation has its newest match already
            text, span = snippet(message.content, query)
            found += 1
            if hit is not None:  # the title matched too: point at the message, keep the title's rank
                hit.message_id, hit.role, hit.snippet, hit.highlight = message.pk, message.role, text, span
            else:
                hits[message.conversation_id] = Hit(message.conversation, message.pk, message.role, text, span)
        if found >= limit:
            break
    return sorted(hits.values(), key=lambda h: h.conversation.updated_at, reverse=True)[:limit]
