"""The OpenAI-compatible API: POST /v1/chat/completions, POST /v1/completions, POST /v1/responses
(text turns), GET /v1/models, GET /v1/models/<id>, and an OpenAI-shaped JSON 404 for any
other path under /v1/.

Thin, like the seed API: `chat.openai_protocol` parses and validates the request and shapes
the answer; this module calls `turns` and encodes the answer as one JSON object or a stream of
SSE `data:` lines ending with `data: [DONE]`. Errors have OpenAI's shape and statuses, so the
official client raises its typed exceptions (BadRequestError, AuthenticationError,
NotFoundError, RateLimitError, InternalServerError). The API is for programs: a Bearer key
when CHATGLM_API_KEYS is set, open otherwise; the browser session is not used.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from .. import inputs, params
from ..engine import TextDelta
from ..engine.base import ModelInfo
from ..errors import ChatError, unexpected_error, unfinished_answer
from ..models import Conversation, Message, Role
from ..openai_protocol import (ChatRequest, ChatShapes, ResponseShapes, ResponsesRequest, TextRequest, TextShapes,
                               model_not_found, model_object, previous_not_found, response_id, served_names)
from ..turns import Protocol, TurnDone, TurnInput, ready_engine, start_turn
from . import sse
from ..owners import http_caller
from .common import allow, json_errors, read_json


# -- models -----------------------------------------------------------------------------------


async def served_model() -> ModelInfo:
    """The loaded model's info, waiting while it loads; 503 if it cannot be loaded."""
    return (await ready_engine()).info


@csrf_exempt  # programs only: http_caller never uses the session here
@json_errors()
@allow("GET")
async def models(request):
    await http_caller(request, allow_session=False)
    names = served_names(await served_model())
    return JsonResponse({"object": "list", "data": [model_object(name) for name in names]})


@csrf_exempt
@json_errors()
@allow("GET")
async def model(request, model_id: str):
    await http_caller(request, allow_session=False)
    info = await served_model()
    if model_id not in served_names(info):
        raise model_not_found(model_id, info)
    return JsonResponse(model_object(model_id))


@csrf_exempt
@json_errors()
async def unknown_url(request, rest: str = ""):
    """Any other path under /v1/: OpenAI's own 404 answer, so SDKs show a readable error."""
    raise ChatError(f"Unknown request URL: {request.method} {inputs.safe(request.path)}. This server serves "
                    "/v1/chat/completions, /v1/completions, /v1/responses and /v1/models.", status=404,
                    type="invalid_request_error", code="unknown_url")


# -- completions ------------------------------------------------------------------------------


def failure(turn, done: TurnDone) -> ChatError:
    return unfinished_answer(done.result.finish_reason, done.result.error, turn.id)


async def _answer(request, parse, shapes, query_of):
    """One completion request: parse, start the turn, answer whole or as a stream."""
    owner = await http_caller(request, allow_session=False)
    data = read_json(request)
    req = parse(data, await served_model())
    system_prompt, history, query = query_of(req)
    turn = await start_turn(TurnInput(
        owner=owner,
        protocol=Protocol.OPENAI,
        query=query,
        params=req.params,
        history=params.used_history(history),  # what cannot reach the model is not stored either
        system_prompt=system_prompt,
        store=req.store,
    ))
    shape = shapes(turn.id, req)
    if req.stream:
        return sse.response(_stream_body(turn, shape), turn)
    return await _whole_answer(turn, shape)


@csrf_exempt  # programs only: http_caller never uses the session here
@json_errors()
@allow("POST")
async def chat_completions(request):
    return await _answer(request, ChatRequest, ChatShapes, lambda req: (req.system_prompt, req.history, req.query))


@csrf_exempt
@json_errors()
@allow("POST")
async def completions(request):
    return await _answer(request, TextRequest, TextShapes, lambda req: (None, [], req.prompt))


async def _stream_body(turn, shape):
    """Chunks as OpenAI sends them; never raises (docs/pitfalls.md#sse-never-raise); a disconnect cancels the turn."""
    try:
        first = shape.first()
        if first is not None:
            yield sse.event(None, first)
        async for event in sse.turn_events(turn, settings.CHATGLM["PING_SECONDS"]):
            if isinstance(event, str):
                yield event
            elif isinstance(event, TextDelta):
                yield sse.event(None, shape.delta(event.text))
            elif isinstance(event, TurnDone):
                if event.result.finish_reason not in ("stop", "length"):
                    yield sse.event(None, {"error": failure(turn, event).as_dict()})
                    return
                yield sse.event(None, shape.last(event.result.finish_reason))
                if shape.include_usage:
                    yield sse.event(None, shape.usage_chunk(event.result.usage()))
                yield sse.event(None, "[DONE]")
    except Exception as exc:  # noqa: BLE001 - never let a stream body raise (docs/pitfalls.md#sse-never-raise)
        yield sse.event(None, {"error": unexpected_error(exc, "completion stream").as_dict()})
    finally:
        turn.cancel()  # a client that disconnects stops its generation at the next decode step


# -- responses (text turns) -------------------------------------------------------------------


@sync_to_async
def _check_latest(owner, req: ResponsesRequest) -> None:
    """`previous_response_id` must name the latest answer of a conversation the caller owns:
    the stored conversation is continued after it (earlier answers would need a branch)."""
    conversation_id, message_id = req.previous
    conversation = Conversation.objects.owned_by(owner).filter(pk=conversation_id).first()
    if conversation is None or not Message.objects.filter(conversation=conversation, pk=message_id).exists():
        raise previous_not_found(req.previous_id)
    latest = conversation.messages.filter(role=Role.ASSISTANT).order_by("-position").values_list("pk", flat=True)
    if latest.first() != message_id:
        raise ChatError("'previous_response_id' must be the latest response of its conversation: continuing an "
                        "earlier one is not supported.", param="previous_response_id", code="not_latest_response")


@csrf_exempt
@json_errors()
@allow("POST")
async def responses(request):
    owner = await http_caller(request, allow_session=False)
    req = ResponsesRequest(read_json(request), await served_model())
    if req.previous is not None:
        await _check_latest(owner, req)
    turn = await start_turn(TurnInput(
        owner=owner,
        protocol=Protocol.OPENAI,
        query=req.query,
        params=req.params,
        history=None if req.previous else params.used_history(req.history),
        conversation_id=req.previous[0] if req.previous else None,
        system_prompt=req.system_prompt,
        store=req.store,
    ))
    shape = ResponseShapes(response_id(turn.conversation_id, turn.message_id, turn.id), req)
    if req.stream:
        return sse.response(_response_events(turn, shape), turn)
    return await _whole_answer(turn, shape)


async def _response_events(turn, shape: ResponseShapes):
    """The Responses API's named events (`event: response.output_text.delta` …), as the
    openai SDK's `responses.stream()` reads them; never raises; a disconnect cancels the turn."""
    try:
        for name, data in shape.opening():
            yield sse.event(name, data)
        async for event in sse.turn_events(turn, settings.CHATGLM["PING_SECONDS"]):
            if isinstance(event, str):
                yield event
            elif isinstance(event, TextDelta):
                yield sse.event(*shape.delta(event.text))
            elif isinstance(event, TurnDone):
                if event.result.finish_reason not in ("stop", "length"):
                    yield sse.event(*shape.failed(failure(turn, event).as_dict()))
                    return
                for name, data in shape.closing(event.result.text, event.result.finish_reason, event.result.usage()):
                    yield sse.event(name, data)
    except Exception as exc:  # noqa: BLE001 - never let a stream body raise (docs/pitfalls.md#sse-never-raise)
        yield sse.event(*shape.failed(unexpected_error(exc, "response stream").as_dict()))
    finally:
        turn.cancel()


urlpatterns = [
    path("v1/responses", responses, name="openai-responses"),
    path("v1/chat/completions", chat_completions, name="openai-chat-completions"),
    path("v1/completions", completions, name="openai-completions"),
    path("v1/models", models, name="openai-models"),
    # `path`: Hugging Face ids have a slash (THUDM/chatglm3-6b).
    path("v1/models/<path:model_id>", model, name="openai-model"),
    re_path(r"^v1(?:/(?P<rest>.*))?$", unknown_url, name="openai-unknown"),
]


async def _whole_answer(turn, shape) -> JsonResponse:
    """A non-streamed answer in the endpoint's shape, once the turn ends."""
    try:
        async for event in turn.events():
            if isinstance(event, TurnDone):
                if event.result.finish_reason not in ("stop", "length"):
                    raise failure(turn, event)
                body = shape.whole(event.result.text, event.result.finish_reason, event.result.usage())
                return JsonResponse(body, json_dumps_params={"ensure_ascii": False})
    finally:
        turn.cancel()  # the client went away before the answer: stop generating for nobody
