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

import dataclasses

from asgiref.sync import sync_to_async
from django.http import JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from .. import inputs, params, selectors
from ..errors import ChatError, unfinished_answer
from ..openai_protocol import (ChatRequest, ChatShapes, ResponseShapes, ResponsesRequest, TextRequest, TextShapes,
                               choice_params, model_not_found, model_object, previous_not_found, response_id,
                               served_names, usage_of)
from ..owners import http_caller
from ..turns import Protocol, TurnDone, TurnInput, served_model, start_turn, tools_refusal
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
    """One completion request: parse, start its turns (one per choice), answer whole or as a stream."""
    owner = await http_caller(request, allow_session=False)
    data = read_json(request)
    req = parse(data, await served_model())
    system_prompt, history, query = query_of(req)
    tools = getattr(req, "tools", [])
    if getattr(req, "uses_tools", False):
        offered = [{"role": "system", "content": "", "tools": tools}]
        refusal = await tools_refusal(offered, dataclasses.replace(req.params, tool_choice=None))
        param = "tools" if tools else "messages"
        if refusal is None:  # the tools can be served: can the call be forced?
            refusal, param = await tools_refusal(offered, req.params), "tool_choice"
        if refusal is not None:
            raise ChatError(f"'{param}' cannot be served with this model: {refusal}.", param=param,
                            code="unsupported_parameter")
    params_of = choice_params(req.params, req.best_of)
    if req.best_of > req.n and req.params.logprobs is None:  # ranking needs every candidate's logprobs
        params_of = [dataclasses.replace(p, logprobs=0) for p in params_of]
    turns = []
    try:
        for index, choice in enumerate(params_of):
            turns.append(await start_turn(TurnInput(
                owner=owner,
                protocol=Protocol.OPENAI,
                query=query,
                params=choice,
                history=params.used_history(history),  # what cannot reach the model is not stored either
                system_prompt=system_prompt,
                # Of n choices the first is stored, as the conversation's answer (docs/sampling.md).
                store=req.store and index == 0,
                tools=tools,
                steps=getattr(req, "steps", []),
            )))
    except BaseException:
        for turn in turns:
            turn.cancel()
        raise
    shape = shapes(turns[0].id, req)
    if req.stream:
        return sse.turn_response(turns, CompletionEncoder(turns, shape))
    return await _whole_answer(turns, shape, keep=req.n, strip_logprobs=req.params.logprobs is None)


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
    """Chunks as OpenAI sends them (`data:` lines ending with `data: [DONE]`), the n choices'
    interleaved by index; a failed choice ends the stream with its error."""

    where = "completion stream"

    def __init__(self, turns, shape):
        self.turns, self.shape = turns, shape
        self.results = [None] * len(turns)

    def opening(self) -> list[str]:
        firsts = (self.shape.first(index) for index in range(len(self.turns)))
        return [sse.event(None, first) for first in firsts if first is not None]

    def delta(self, index: int, delta) -> list[str]:
        return [sse.event(None, self.shape.delta(index, delta))]

    def done(self, index: int, done: TurnDone) -> list[str]:
        error = failure(self.turns[index], done)
        if error is not None:
            self.closed = True
            return [self.failed(error)]
        self.results[index] = done.result
        events, reason = [], done.result.finish_reason
        if done.result.tool_calls:
            events = [sse.event(None, chunk) for chunk in self.shape.tool_call_chunks(index, done.result.tool_calls)]
            reason = "tool_calls"
        return [*events, sse.event(None, self.shape.last(index, reason))]

    def closing(self) -> list[str]:
        usage = [sse.event(None, self.shape.usage_chunk(usage_of(self.results)))] if self.shape.include_usage else []
        return [*usage, sse.event(None, "[DONE]")]

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
        format_param="text.format",
    ))
    shape = ResponseShapes(response_id(turn.conversation_id, turn.message_id, turn.id), req)
    if req.stream:
        return sse.turn_response(turn, ResponseEncoder(turn, shape))
    return await _whole_answer([turn], shape)


class ResponseEncoder(sse.Encoder):
    """The Responses API's named events (`event: response.output_text.delta` …), as the
    openai SDK's `responses.stream()` reads them."""

    where = "response stream"

    def __init__(self, turn, shape: ResponseShapes):
        self.turn, self.shape = turn, shape

    def opening(self) -> list[str]:
        return [sse.event(name, data) for name, data in self.shape.opening()]

    def delta(self, index: int, delta) -> list[str]:
        return [sse.event(*self.shape.delta(delta.text))]

    def done(self, index: int, done: TurnDone) -> list[str]:
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


async def _whole_answer(turns, shape, keep: int | None = None, strip_logprobs: bool = False) -> JsonResponse:
    """A non-streamed answer in the endpoint's shape, once every turn ends. With more turns than
    `keep` (best_of), the `keep` with the highest total logprob, in that order."""
    try:
        results = []
        for turn in turns:
            done = await turn.outcome()
            error = failure(turn, done)
            if error is not None:
                raise error
            results.append(done.result)
        if keep is not None and keep < len(results):
            ranked = sorted(results, key=lambda r: -sum(e.logprob for e in r.logprobs or ()))[:keep]
            usage = usage_of(results)  # every candidate was generated: all count
            results = [dataclasses.replace(r, logprobs=None) for r in ranked] if strip_logprobs else ranked
            body = {**shape.whole_of(results), "usage": usage}
        else:
            body = shape.whole_of(results)
        return json_response(body)
    finally:
        for turn in turns:
            turn.cancel()  # the client went away before the answer: stop generating for nobody
