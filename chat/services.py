"""Every write to saved conversations: create, rename, settings, delete; a turn's question and
answer (for chat.turns, which orchestrates); answers interrupted by a crash; retention.

Every change is validated completely before anything is written, so a bad request changes
nothing; every write on a caller's behalf goes through `owned_by`, so a foreign id is the
same 404 as an unknown one. Sync functions: async callers use `sync_to_async`.

`Conversation.settings` is page-only state: the page's generation settings for the
conversation, validated and stored here and applied by the page to the requests it sends
(docs/page.md). No server path applies them; the stored system prompt, by contrast, is
applied to every turn of the conversation.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings as django_settings
from typing import TYPE_CHECKING

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from . import inputs, params, tree
from .errors import ChatError, invalid, not_found
from .models import TITLE_MAX_LENGTH, Conversation, FinishReason, Message, Role, Source
from .owners import Owner

if TYPE_CHECKING:
    from .engine import GenerationResult
    from .turns import TurnInput

Pair = tuple[str, str]

# The generation settings a conversation can keep: the numeric parameters of chat.params.
SETTING_NAMES = tuple(params.RANGES)
EDITABLE_FIELDS = ("title", "system_prompt", "settings")


def clean_title(value: Any, *, required: bool) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise invalid("title", "'title' must be a string.", "invalid_type")
    title = value.strip()
    if required and not title:
        raise invalid("title", "'title' must not be empty.", "empty")
    if len(title) > TITLE_MAX_LENGTH:
        raise invalid("title", f"'title' is longer than {TITLE_MAX_LENGTH} characters.", "too_long")
    if inputs.has_control(title, lines=False):  # one line of plain text in every list; tabs and newlines too
        raise invalid("title", "'title' must not contain control characters.", "invalid_character")
    return title


def clean_system_prompt(value: Any) -> str:
    if value is None:
        return ""
    return params.text({"system_prompt": value}, "system_prompt", required=False,
                       max_chars=django_settings.CHATGLM["MAX_QUERY_CHARS"])


def clean_settings(value: Any, current: dict | None = None) -> dict:
    """Validated settings, applied to `current` as a JSON merge patch (RFC 7396): null removes a key."""
    if not isinstance(value, dict):
        raise invalid("settings", "'settings' must be an object.", "invalid_type")
    unknown = sorted(set(value) - set(SETTING_NAMES))
    if unknown:
        raise invalid(f"settings.{inputs.safe(unknown[0])}",
                      f"Unknown setting {inputs.safe(repr(unknown[0]))}; known: {', '.join(SETTING_NAMES)}.", "unknown_field")
    merged = dict(current or {})
    for name, raw in value.items():
        if raw is None:
            merged.pop(name, None)
        else:
            param = f"settings.{name}"  # so errors name the field as the client sent it
            merged[name] = params.number({param: raw}, name, param)
    return merged


def _reject_unknown(data: dict) -> None:
    unknown = sorted(set(data) - set(EDITABLE_FIELDS))
    if unknown:
        raise invalid(inputs.safe(unknown[0]), f"Unknown field {inputs.safe(repr(unknown[0]))}; editable: {', '.join(EDITABLE_FIELDS)}.",
                      "unknown_field")


def new_conversation_fields(data: dict) -> dict:
    """The validated fields of a conversation to create, from a request body."""
    _reject_unknown(data)
    return {
        "title": clean_title(data.get("title"), required=False),
        "system_prompt": clean_system_prompt(data.get("system_prompt")),
        "settings": clean_settings(data["settings"]) if data.get("settings") is not None else {},
    }


def create_conversation(owner: Owner, fields: dict, *, source: str = Source.WEB, model: str = "") -> Conversation:
    """The one way a conversation is made: by the page (empty; the first turn gives it a title if
    it has none) or by a turn's first question (save_question, which also records the system
    prompt as the conversation's first message)."""
    return Conversation.objects.create(user_id=owner.user_id, visitor=owner.visitor, api_key_name=owner.api_key,
                                       source=source, model=model, **fields)


def create_page_conversation(owner: Owner, fields: dict) -> Conversation:
    """An empty conversation created from the page: a browser session's only."""
    if not owner.is_person:
        raise ChatError("Saved conversations need a browser session.", status=403,
                        type="permission_error", code="no_session")
    return create_conversation(owner, fields)


def update_conversation(owner: Owner, conversation_id: uuid.UUID, data: dict) -> Conversation:
    """Rename, change the system prompt or merge settings; all or nothing."""
    _reject_unknown(data)
    if not data:
        raise invalid(None, f"Nothing to change: send one of {', '.join(EDITABLE_FIELDS)}.", "empty")
    changes: dict[str, Any] = {}
    if "title" in data:
        changes["title"] = clean_title(data["title"], required=True)
    if "system_prompt" in data:
        changes["system_prompt"] = clean_system_prompt(data["system_prompt"])
    if "settings" in data:
        clean_settings(data["settings"])  # every error before the lookup: a bad request is a 400 for any id
    with transaction.atomic():
        conversation = Conversation.objects.owned_by(owner).select_for_update().filter(pk=conversation_id).first()
        if conversation is None:
            raise not_found()
        if "settings" in data:  # merged with what is stored, under the row lock
            changes["settings"] = clean_settings(data["settings"], conversation.settings)
        for name, value in changes.items():
            setattr(conversation, name, value)
        conversation.updated_at = timezone.now()
        conversation.save(update_fields=[*changes, "updated_at"])
        if "system_prompt" in changes:
            # A turn that created the conversation recorded its system prompt as the root
            # message: the record must say what the model is now told.
            conversation.messages.filter(role=Role.SYSTEM).update(content=changes["system_prompt"])
    return conversation


def switch_branch(owner: Owner, conversation_id: uuid.UUID, message_id: int) -> None:
    """Make the branch through `message_id` current, down to its newest leaf (the page's arrows)."""
    with transaction.atomic():
        conversation = Conversation.objects.owned_by(owner).select_for_update().filter(pk=conversation_id).first()
        if conversation is None:
            raise not_found()
        messages = tree.by_id(conversation.messages.only("id", "parent_id", "position"))
        if message_id not in messages:
            raise invalid("message_id", "'message_id' is not a message of this conversation.", "not_found")
        conversation.current_leaf_id = tree.deepest(messages, message_id)
        conversation.save(update_fields=["current_leaf"])  # not updated_at: reading is not activity


def delete_conversation(owner: Owner, conversation_id: uuid.UUID) -> None:
    """Delete the conversation and (by cascade) its messages."""
    with transaction.atomic():
        deleted, _ = Conversation.objects.owned_by(owner).filter(pk=conversation_id).delete()
    if not deleted:
        raise not_found()


# -- a turn's writes (chat.turns) -------------------------------------------------------------


def title_from(query: str) -> str:
    title = " ".join(query.split())
    return title if len(title) <= 80 else title[:79].rstrip() + "…"


def save_question(inp: TurnInput, conversation, history: list[Pair], system_prompt: str, model_id: str,
                   truncated: int = 0):
    """Save the question and an empty answer marked as generating; return their ids."""
    with transaction.atomic():
        if conversation is None:
            conversation = create_conversation(
                inp.owner, {"title": title_from(inp.query)[:TITLE_MAX_LENGTH], "system_prompt": system_prompt},
                source=inp.source, model=model_id,
            )
            position, parent_id = 0, None
            if system_prompt:
                parent_id = Message.objects.create(conversation=conversation, position=0, role=Role.SYSTEM,
                                                   content=system_prompt).pk
                position = 1
            for question, answer in history:  # a seed client's history becomes part of the record
                answer_steps = [{"role": "assistant", "content": answer}] if isinstance(answer, str) else answer
                for step in [{"role": "user", "content": question}, *answer_steps]:
                    parent_id = _save_step(conversation, parent_id, position, step)
                    position += 1
        else:
            # Update the row as it is now (a rename may have landed since it was read), and
            # refuse if it was deleted meanwhile.
            rows = Conversation.objects.filter(pk=conversation.pk)
            if not rows.update(model=model_id, updated_at=timezone.now()):
                raise not_found()
            rows.filter(title="").update(title=title_from(inp.query)[:TITLE_MAX_LENGTH])
            last = conversation.messages.aggregate(last=Max("position"))["last"]
            position = 0 if last is None else last + 1
            parent_id = inp.parent_id
            if not inp.branch:  # after the current leaf, as it is now
                parent_id = (rows.values_list("current_leaf_id", flat=True).first()
                             or conversation.messages.order_by("-position").values_list("pk", flat=True).first())
        regenerate = inp.branch and parent_id is not None and Message.objects.filter(pk=parent_id, role=Role.USER).exists()
        if regenerate:  # a new answer to the same question, a sibling of its other answers
            question = Message(pk=parent_id)
            position -= 1  # the answer takes `position + 1`, the next free one
        else:
            question = Message(conversation=conversation, parent_id=parent_id, position=position,
                               role=Role.USER, content=inp.query)
            question.explicit_root = parent_id is None
            question.save()
            for step in inp.steps:  # the answer's tool calls and results so far
                position += 1
                question = Message(pk=_save_step(conversation, question.pk, position, step))
        answer = Message.objects.create(
            conversation=conversation, parent_id=question.pk, position=position + 1, role=Role.ASSISTANT,
            finish_reason=FinishReason.GENERATING, params=inp.params.as_dict(), history_truncated=truncated,
        )
        Conversation.objects.filter(pk=conversation.pk).update(current_leaf=answer)
    return str(conversation.id), question.pk, answer.pk


def _save_step(conversation, parent_id, position: int, step: dict) -> int:
    """Save one message of a history (engine message shape, chat/engine/tools.py); its id."""
    return Message.objects.create(
        conversation=conversation, parent_id=parent_id, position=position, role=step["role"],
        content=step["content"], finish_reason=FinishReason.STOP if step["role"] == Role.ASSISTANT else "",
        tool_calls=step.get("tool_calls") or [], tool_call_id=step.get("tool_call_id", ""),
        tool_name=step.get("name", ""),
    ).pk


def save_answer(message_id: int, result: GenerationResult) -> None:
    """The turn's outcome into its answer's placeholder (completed, cancelled or failed)."""
    with transaction.atomic():
        Message.objects.filter(pk=message_id).update(
            content=result.text,
            tool_calls=[call.as_dict() for call in result.tool_calls],
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            time_to_first_token=result.time_to_first_token,
            duration=result.duration,
            error=result.error,
        )
        Conversation.objects.filter(messages__pk=message_id).update(updated_at=timezone.now())


def mark_interrupted_answers() -> int:
    """At start-up: answers left 'generating' by a crashed process are marked as errors."""
    return Message.objects.filter(role=Role.ASSISTANT, finish_reason=FinishReason.GENERATING).update(
        finish_reason=FinishReason.ERROR, error="The server stopped while this answer was being generated."
    )


# -- retention -------------------------------------------------------------------------------

PURGE_BATCH = 500


def expired_conversations(cutoff):
    return Conversation.objects.filter(updated_at__lt=cutoff)


def purge_conversations(cutoff) -> tuple[int, int]:
    """Delete conversations not updated since `cutoff` (their messages go with them), in small
    batches so that a big purge never holds the database's write lock for long; returns the
    numbers of conversations and messages deleted."""
    conversations = messages = 0
    expired = expired_conversations(cutoff)
    while True:
        ids = list(expired.order_by("updated_at").values_list("pk", flat=True)[:PURGE_BATCH])
        if not ids:
            break
        with transaction.atomic():
            # Re-check the age inside the transaction: a turn may have touched one since.
            _, counts = Conversation.objects.filter(pk__in=ids, updated_at__lt=cutoff).delete()
        conversations += counts.get(Conversation._meta.label, 0)
        messages += counts.get(Message._meta.label, 0)
        if len(ids) < PURGE_BATCH:
            break
    return conversations, messages
