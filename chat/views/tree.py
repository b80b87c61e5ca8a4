"""The conversation tree's endpoints for the page: switch branch, and what the next request costs.

`POST /api/conversations/<id>/switch {"message_id": N}` makes the branch through message N
current (down to its newest leaf) and returns the conversation as `GET` does; the page's
'‹ 2/3 ›' arrows call it, so a reload shows the branch chosen. `GET .../context` says how much
of the model's context the next request will use: the prompt tokens of the current path, the
context length, the room kept for the answer, and how many of the oldest turns would be left
out (`history_truncated`), the same fitting as a real turn (`turns.fit_history`).
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.urls import path

from .. import params, selectors, services, tree
from ..errors import ChatError, invalid, turn_in_progress
from ..models import Role
from ..owners import page_caller
from ..turns import live_turn, measure_context
from .common import conversation_detail, json_response, methods, read_json


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
        raise turn_in_progress()
    await sync_to_async(services.switch_branch)(owner, conversation_id, message_id)
    return json_response(await conversation_detail(owner, conversation_id))


@sync_to_async
def _current(owner, conversation_id):
    conversation = selectors.owned_conversation(owner, conversation_id)
    path_ = tree.current_path(conversation, conversation.messages.only("id", "parent_id", "position", "role", "content", "tool_calls", "tool_call_id",
                                                 "tool_name"))
    return conversation, tree.pairs(path_), sum(1 for m in path_ if m.role == Role.USER)


async def context_usage(request, conversation_id):
    owner = await page_caller(request)
    conversation, pairs, _ = await _current(owner, params.conversation_id(conversation_id))
    try:
        generation = params.generation_params(conversation.settings or {})
    except ChatError:
        generation = params.generation_params({})
    return json_response(await measure_context(conversation.system_prompt, pairs, generation))


urlpatterns = [
    path("api/conversations/<str:conversation_id>/switch", methods(POST=switch_branch), name="conversation-switch"),
    path("api/conversations/<str:conversation_id>/context", methods(GET=context_usage), name="conversation-context"),
]
