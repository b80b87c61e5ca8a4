"""Writes to saved conversations beyond a chat turn (turns.py): create, rename, settings, delete.

Every change is validated completely before anything is written, so a bad request changes
nothing; every write goes through `owned_by`, so a foreign id is the same 404 as an unknown one.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone

from . import inputs, params
from .errors import ChatError, invalid, not_found
from .models import TITLE_MAX_LENGTH, Conversation, Source
from .owners import Owner

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


def create_conversation(owner: Owner, fields: dict) -> Conversation:
    """An empty conversation for the page (the first turn gives it a title if it has none)."""
    if not owner.is_person:
        raise ChatError("Saved conversations need a browser session.", status=403,
                        type="permission_error", code="no_session")
    return Conversation.objects.create(user_id=owner.user_id, visitor=owner.visitor, source=Source.WEB, **fields)


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
    return conversation


def delete_conversation(owner: Owner, conversation_id: uuid.UUID) -> None:
    """Delete the conversation and (by cascade) its messages."""
    with transaction.atomic():
        deleted, _ = Conversation.objects.owned_by(owner).filter(pk=conversation_id).delete()
    if not deleted:
        raise not_found()
