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
from django.http import JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from .. import inputs, params, selectors
from ..errors import ChatError, unfinished_answer
from ..openai_protocol import (ChatRequest, ChatShapes, ResponseShapes, ResponsesRequest, TextRequest, TextShapes,
                               model_not_found, model_object, previous_not_found, response_id, served_names)
from ..owners import http_caller
from ..turns import Protocol, TurnDone, TurnInput, served_model, start_turn
from . import sse
from .common import allow, json_errors, json_response, read_json


# -- models -----------------------------------------------------------------------------------


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


def failure(turn, done: TurnDone) -> ChatError | None:
    """The error for an answer that OpenAI's shapes cannot carry (neither `stop` nor `length`)."""
    if done.result.finish_reason in ("stop", "length"):
        return None
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
        return sse.turn_response(turn, CompletionEncoder(turn, shape))
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


class CompletionEncoder(sse.Encoder):
    """Chunks as OpenAI sends them (`data:` lines ending with `data: [DONE]`)."""

    where = "completion stream"

    def __init__(self, turn, shape):
        self.turn, self.shape = turn, shape

    def opening(self) -> list[str]:
        first = self.shape.first()
        return [] if first is None else [sse.event(None, first)]

    def delta(self, text: str) -> list[str]:
        return [sse.event(None, self.shape.delta(text))]

    def done(self, done: TurnDone) -> list[str]:
        error = failure(self.turn, done)
        if error is not None:
            return [self.failed(error)]
        events = [sse.event(None, self.shape.last(done.result.finish_reason))]
        if self.shape.include_usage:
            events.append(sse.event(None, self.shape.usage_chunk(done.result.usage())))
        return [*events, sse.event(None, "[DONE]")]

    def failed(self, error: ChatError) -> str:
        return sse.event(None, {"error": error.as_dict()})


# -- responses (text turns) -------------------------------------------------------------------


async def _check_latest(owner, req: ResponsesRequest) -> None:
    """`previous_response_id` must name the latest answer of a conversation the caller owns:
    the stored conversation is continued after it (earlier answers would need a branch)."""
    conversation_id, message_id = req.previous
    found, latest = await sync_to_async(selectors.latest_answer)(owner, conversation_id, message_id)
    if not found:
        raise previous_not_found(req.previous_id)
    if latest != message_id:
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
        return sse.turn_response(turn, ResponseEncoder(turn, shape))
    return await _whole_answer(turn, shape)


class ResponseEncoder(sse.Encoder):
    """The Responses API's named events (`event: response.output_text.delta` …), as the
    openai SDK's `responses.stream()` reads them."""

    where = "response stream"

    def __init__(self, turn, shape: ResponseShapes):
        self.turn, self.shape = turn, shape

    def opening(self) -> list[str]:
        return [sse.event(name, data) for name, data in self.shape.opening()]

    def delta(self, text: str) -> list[str]:
        return [sse.event(*self.shape.delta(text))]

    def done(self, done: TurnDone) -> list[str]:
        error = failure(self.turn, done)
        if error is not None:
            return [self.failed(error)]
        result = done.result
        return [sse.event(name, data) for name, data in self.shape.closing(result.text, result.finish_reason, result.usage())]

    def failed(self, error: ChatError) -> str:
        return sse.event(*self.shape.failed(error.as_dict()))


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
    done = await turn.outcome()
    error = failure(turn, done)
    if error is not None:
        raise error
    return json_response(shape.whole(done.result.text, done.result.finish_reason, done.result.usage()))
