"""The original demo's API, word for word: POST /chat, POST /stream (SSE), GET /clear.

Thin: parse and validate, call `turns`, encode. Clients of the Flask/FastAPI demo keep
working: the same fields, `event: delta` with a JSON `data`, and a final event with
`finished: true`; new fields (conversation_id, finish_reason, usage) are additions.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .. import live, params
from ..engine import TextDelta, get_engine
from ..errors import ChatError, invalid
from ..models import Source
from ..turns import TurnDone, TurnInput, start_turn
from . import sse
from .auth import api_caller
from .common import error_response, json_errors, read_json

log = logging.getLogger(__name__)
SEED_ENVELOPE = {"success": False}


async def _turn_input(request) -> TurnInput:
    owner = await api_caller(request)
    data = read_json(request)
    query = params.text(data, "query")
    conversation_id = params.conversation_id(data.get("conversation_id"))
    if conversation_id is not None and data.get("history"):
        raise invalid("history", "Send either 'history' or 'conversation_id', not both.", "conflict")
    return TurnInput(
        owner=owner,
        source=Source.WEB if owner.is_person else Source.API,
        query=query,
        params=params.generation_params(data),
        history=params.history_pairs(data.get("history")),
        conversation_id=conversation_id,
        store=settings.CHATGLM["STORE_API_TURNS"] or owner.is_person,
    )


def final_fields(turn, done: TurnDone) -> dict:
    return {
        "query": turn.query,
        "response": done.result.text,
        "history": [list(pair) for pair in turn.history] + [[turn.query, done.result.text]],
        "conversation_id": done.conversation_id,
        "finish_reason": done.result.finish_reason,
        "usage": done.result.usage(),
        "history_truncated": turn.history_truncated,
    }


def generation_failed(done: TurnDone) -> ChatError:
    return ChatError(
        f"The model failed while generating: {done.result.error or 'unknown error'}",
        status=500, type="server_error", code="generation_failed",
    )


@csrf_exempt  # api_caller enforces CSRF for requests that use the session cookie
@require_http_methods(["POST"])
@json_errors(SEED_ENVELOPE)
async def chat(request):
    turn = await start_turn(await _turn_input(request))
    try:
        async for event in turn.events():
            if isinstance(event, TurnDone):
                if event.result.finish_reason == "error":
                    raise generation_failed(event)
                return JsonResponse({**final_fields(turn, event), "success": True},
                                    json_dumps_params={"ensure_ascii": False})
    finally:
        turn.cancel()  # the client went away before the answer: stop generating for nobody


@csrf_exempt
@require_http_methods(["POST"])
async def stream(request):
    try:
        turn = await start_turn(await _turn_input(request))
    except ChatError as error:
        return error_response(error, SEED_ENVELOPE)
    if turn.owner.is_person:
        live.ensure_broadcast(turn)  # the page's fallback: the person's other tabs see it live too
    return sse.response(_stream_body(turn), turn)


async def _stream_body(turn):
    response = ""  # the answer so far as this client has seen it (turn.text may be further on)
    try:
        async for event in sse.turn_events(turn, settings.CHATGLM["PING_SECONDS"]):
            if isinstance(event, str):
                yield event
            elif isinstance(event, TextDelta):
                response += event.text
                yield sse.event("delta", {"delta": event.text, "response": response, "finished": False})
            elif isinstance(event, TurnDone):
                if event.result.finish_reason == "error":
                    yield sse.event("error", {**SEED_ENVELOPE, "error": generation_failed(event).as_dict()})
                else:
                    yield sse.event("delta", {"delta": "", **final_fields(turn, event), "finished": True})
    except Exception:  # noqa: BLE001 - never let a stream body raise (PITFALLS #3)
        log.exception("stream failed")
        error = ChatError("Internal server error.", status=500, type="server_error", code="internal_error")
        yield sse.event("error", {**SEED_ENVELOPE, "error": error.as_dict()})
    finally:
        turn.cancel()  # a client that disconnects stops its generation at the next decode step


@csrf_exempt
@require_http_methods(["GET", "POST"])
@json_errors(SEED_ENVELOPE)
async def clear(request):
    """Free cached accelerator memory (the seed's /clear); a no-op on CPU."""
    await api_caller(request)
    get_engine().clear_cache()
    return JsonResponse({"success": True})


urlpatterns = [
    path("chat", chat, name="seed-chat"),
    path("stream", stream, name="seed-stream"),
    path("clear", clear, name="seed-clear"),
]
