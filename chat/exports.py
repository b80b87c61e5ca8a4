"""Conversations as documents a person takes away: JSON (complete, re-readable) or Markdown (to read).

One representation of a message for the API, the JSON export and the admin's export action.
JSON holds the whole tree (every message with its `parent_id`, and the current path); Markdown
holds the current path, the conversation as it reads on screen.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from django.utils import timezone
from django.utils.http import content_disposition_header
from django.utils.text import slugify

from . import tree
from .models import Conversation, FinishReason, Message, Role

EXPORT_FORMAT = "chatglm-conversations"
EXPORT_VERSION = 1


def iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def message_data(message: Message) -> dict:
    return {
        "id": message.pk,
        "parent_id": message.parent_id,
        "position": message.position,
        "role": message.role,
        "content": message.content,
        "tool_calls": message.tool_calls,  # an assistant's calls: [{"id", "name", "arguments"}]
        "tool_call_id": message.tool_call_id,  # a tool result's call
        "tool_name": message.tool_name,  # a tool result's function
        "finish_reason": message.finish_reason,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "time_to_first_token": message.time_to_first_token,
        "duration": message.duration,
        "tokens_per_second": message.tokens_per_second,
        "error": message.error,
        "history_truncated": message.history_truncated,
        "created_at": iso(message.created_at),
    }


def conversation_summary(conversation: Conversation) -> dict:
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "source": conversation.source,
        "model": conversation.model,
        "created_at": iso(conversation.created_at),
        "updated_at": iso(conversation.updated_at),
    }


def conversation_data(conversation: Conversation, messages: Iterable[Message], *, owner: bool = False) -> dict:
    """The whole conversation (every branch, in order of creation) and its current path;
    `owner` adds who owns it (the admin's export, not a user's own)."""
    messages = list(messages)
    path = tree.current_path(conversation, messages)
    data = {
        **conversation_summary(conversation),
        "system_prompt": conversation.system_prompt,
        "settings": conversation.settings,
        "current_leaf_id": path[-1].pk if path else None,
        "current_path": [m.pk for m in path],
        "messages": [message_data(m) for m in messages],
    }
    if owner:
        data["owner"] = conversation.owner_label
    return data


def dumps(data) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2)


def conversation_json(conversation: Conversation, messages: Iterable[Message]) -> str:
    return dumps({"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported_at": iso(timezone.now()),
                  **conversation_data(conversation, messages)})


def conversations_json(conversations: Iterable[Conversation]) -> str:
    """Many conversations (messages prefetched) in one document: the admin's export action."""
    return dumps({
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exported_at": iso(timezone.now()),
        "conversations": [conversation_data(c, c.messages.all(), owner=True) for c in conversations],
    })


_ENDINGS = {
    FinishReason.GENERATING: "_(still being generated when exported)_",
    FinishReason.LENGTH: "_(stopped at the length limit)_",
    FinishReason.CANCELLED: "_(stopped before the end)_",
}


def conversation_markdown(conversation: Conversation, messages: Iterable[Message]) -> str:
    lines = [f"# {conversation.title or 'Untitled conversation'}", ""]
    about = [f"Created {conversation.created_at:%Y-%m-%d %H:%M} UTC"]
    if conversation.model:
        about.insert(0, f"Model: `{conversation.model}`")
    lines += [" · ".join(about), ""]
    if conversation.system_prompt:
        lines += ["## System", "", conversation.system_prompt, ""]
    for message in tree.current_path(conversation, messages):
        if message.role == Role.SYSTEM:
            continue  # shown once above, as the conversation's system prompt
        lines += [f"## {message.get_role_display()}", ""]
        if message.role == Role.TOOL:
            lines += [f"_(result of `{message.tool_name}`, call `{message.tool_call_id}`)_", ""]
        if message.content:
            lines += [message.content, ""]
        for call in message.tool_calls or ():
            lines += [f"Calls `{call['name']}` (`{call['id']}`):", "", "```json", call["arguments"], "```", ""]
        if message.role == Role.ASSISTANT:
            if message.finish_reason == FinishReason.ERROR:
                lines += [f"_(failed: {message.error or 'unknown error'})_", ""]
            elif message.finish_reason in _ENDINGS:
                lines += [_ENDINGS[message.finish_reason], ""]
    return "\n".join(lines).rstrip() + "\n"


def filename(conversation: Conversation, extension: str) -> str:
    stem = slugify(conversation.title)[:60].strip("-") or "conversation"
    return f"{stem}-{str(conversation.id)[:8]}.{extension}"


def attachment_header(name: str) -> str:
    return content_disposition_header(as_attachment=True, filename=name)
