"""The conversation tree's endpoints for the page: switch branch, and what the next request costs.

`POST /api/conversations/<id>/switch {"message_id": N}` makes the branch through message N
current (down to its newest leaf) and returns the conversation as `GET` does; the page's
'‹ 2/3 ›' arrows call it, so a reload shows the branch chosen. `GET .../context` says how much
of the model's context the next request will use: the prompt tokens of the current path, the
context length, the room kept for the answer, and how many of the oldest turns would be left
out (`history_truncated`), the same fitting as a real turn (`turns.fit_history`).
"""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.urls import path

from .. import params, selectors, tree
from ..engine import GenerationParams
from ..errors import ChatError, invalid, not_found
from ..models import Conversation, Role
from ..turns import fit_history, live_turn, ready_engine, to_messages
from ..owners import page_caller
from .common import conversation_detail, json_response, methods, read_json


@sync_to_async
def _switch(owner, conversation_id, message_id: int) -> None:
    with transaction.atomic():
        conversation = Conversation.objects.owned_by(owner).select_for_update().filter(pk=conversation_id).first()
        if conversation is None:
            raise not_found()
        messages = tree.by_id(conversation.messages.only("id", "parent_id", "position"))
        if message_id not in messages:
            raise invalid("message_id", "'message_id' is not a message of this conversation.", "not_found")
        conversation.current_leaf_id = tree.deepest(messages, message_id)
        conversation.save(update_fields=["current_leaf"])  # not updated_at: reading is not activity


async def switch_branch(request, conversation_id):
    owner = await page_caller(request)
    conversation_id = params.conversation_id(conversation_id)
    data = read_json(request)
    unknown = sorted(set(data) - {"message_id"})
    if unknown:
        raise invalid(unknown[0], f"Unknown field {unknown[0]!r}; send 'message_id'.", "unknown_field")
    if data.get("message_id") is None:
        raise invalid("message_id", "'message_id' is required.", "missing")
    message_id = params.message_id(data["message_id"], "message_id")
    if live_turn(str(conversation_id)) is not None:
        raise ChatError("An answer is still being generated in this conversation.", status=409,
                        type="invalid_request_error", param="conversation_id", code="turn_in_progress")
    await _switch(owner, conversation_id, message_id)
    return json_response(await conversation_detail(owner, conversation_id))


@sync_to_async
def _current(owner, conversation_id):
    conversation = selectors.owned_conversation(owner, conversation_id)
    path_ = tree.current_path(conversation, conversation.messages.only("id", "parent_id", "position", "role", "content"))
    return conversation, tree.pairs(path_), sum(1 for m in path_ if m.role == Role.USER)


async def context_usage(request, conversation_id):
    owner = await page_caller(request)
    conversation, pairs, _ = await _current(owner, params.conversation_id(conversation_id))
    engine = await ready_engine()
    try:
        generation = params.generation_params(conversation.settings or {})
    except ChatError:
        generation = GenerationParams()
    system = conversation.system_prompt

    def measure():
        whole = engine.count_prompt_tokens(to_messages(system, pairs, ""))
        sent, truncated = fit_history(engine, system, pairs, "", generation)
        return whole, engine.count_prompt_tokens(sent), truncated

    whole, sent, truncated = await asyncio.to_thread(measure)
    context = engine.info.context_length
    return json_response({
        "prompt_tokens": whole,  # the whole current path, before any is left out
        "sent_tokens": sent,  # what the next request sends (before the new question)
        "context_length": context,
        "answer_room": min(generation.max_new_tokens or 512, context // 4),
        "history_pairs": len(pairs),
        "max_history": max(0, settings.CHATGLM["MAX_HISTORY"]),
        "history_truncated": truncated,
    })


urlpatterns = [
    path("api/conversations/<str:conversation_id>/switch", methods(POST=switch_branch), name="conversation-switch"),
    path("api/conversations/<str:conversation_id>/context", methods(GET=context_usage), name="conversation-context"),
]
