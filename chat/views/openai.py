"""The OpenAI-compatible API: POST /v1/chat/completions, GET /v1/models, GET /v1/models/<id>.

Thin, like the seed API: parse and validate the OpenAI request, call `turns`, encode the
answer as a `chat.completion` object or a stream of `chat.completion.chunk` SSE `data:`
lines ending with `data: [DONE]`. Errors have OpenAI's shape and statuses, so the official
client raises its typed exceptions (BadRequestError, AuthenticationError, NotFoundError,
RateLimitError, InternalServerError). The API is for programs: a Bearer key when
CHATGLM_API_KEYS is set, open otherwise; the browser session is not used.
"""

from __future__ import annotations

import time
from functools import wraps

from django.conf import settings
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from .. import inputs, params
from ..engine import GenerationParams, TextDelta, get_engine
from ..engine.base import ModelInfo
from ..errors import ChatError, generation_error, invalid, unexpected_error
from ..models import Source
from ..turns import TurnDone, TurnInput, ready_engine, start_turn
from . import sse
from .auth import api_caller
from .common import json_errors, read_json


OWNED_BY = "chatglm-django"
MESSAGE_ROLES = ("system", "developer", "user", "assistant")
MAX_MESSAGES = 2 * params.MAX_HISTORY_PAIRS + 10
# OpenAI's request name -> GenerationParams field. top_k and repetition_penalty are not
# OpenAI's, but vLLM and TGI accept them too (the official client sends them via extra_body).
NUMBER_PARAMS = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
}
_STARTED = int(time.time())  # `created` of the served model: when this process started


# -- models -----------------------------------------------------------------------------------


async def served_model() -> ModelInfo:
    """The loaded model's info, waiting while it loads; 503 if it cannot be loaded."""
    return (await ready_engine()).info


def model_not_found(model_id: str, param: str | None = None) -> ChatError:
    return ChatError(
        f"The model '{inputs.safe(model_id)}' does not exist. This server serves '{get_engine().info.model_id}'.",
        status=404, type="invalid_request_error", param=param, code="model_not_found",
    )


def model_object(info: ModelInfo) -> dict:
    return {"id": info.model_id, "object": "model", "created": _STARTED, "owned_by": OWNED_BY}


def allow(*methods: str):
    """405 in OpenAI's error shape (inside json_errors) for any other HTTP method."""

    def decorate(view):
        @wraps(view)
        async def wrapper(request, *args, **kwargs):
            if request.method not in methods:
                raise ChatError(f"Method {request.method} is not allowed here; use {' or '.join(methods)}.",
                                status=405, code="method_not_allowed")
            return await view(request, *args, **kwargs)

        return wrapper

    return decorate


@csrf_exempt  # programs only: api_caller never uses the session here
@json_errors()
@allow("GET")
async def models(request):
    await api_caller(request, allow_session=False)
    return JsonResponse({"object": "list", "data": [model_object(await served_model())]})


@csrf_exempt
@json_errors()
@allow("GET")
async def model(request, model_id: str):
    await api_caller(request, allow_session=False)
    info = await served_model()
    if model_id != info.model_id:
        raise model_not_found(model_id)
    return JsonResponse(model_object(info))


# -- request parsing --------------------------------------------------------------------------


def _content(value, param: str, *, nullable: bool) -> str:
    """A message's content: a string, or an array of text parts (joined with newlines, as vLLM does)."""
    if value is None:
        if nullable:  # an assistant message that only carried tool calls
            return ""
        raise invalid(param, f"'{param}' is required.", "missing")
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise invalid(param, f"'{param}' must be a string or an array of content parts.", "invalid_type")
    texts = []
    for j, part in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise invalid(where, f"'{where}' must be an object.", "invalid_type")
        kind = part.get("type")
        if kind != "text":
            raise invalid(f"{where}.type", f"Content parts of type {inputs.safe(repr(kind))} are not supported: this model reads "
                                           "text only (parts of type 'text').", "unsupported_content")
        if not isinstance(part.get("text"), str):
            raise invalid(f"{where}.text", f"'{where}.text' must be a string.", "invalid_type")
        texts.append(part["text"])
    return "\n".join(texts)


def conversation(messages) -> tuple[str | None, list[tuple[str, str]], str]:
    """(system prompt, history pairs, query) from OpenAI `messages`.

    - `system` (and `developer`, OpenAI's newer name for it) messages, wherever they are, are
      joined with blank lines into the system prompt (None when there is none).
    - The last message must be a user message: it is the query.
    - The other messages, in order, become (question, answer) pairs. Runs of the same role
      are merged, joined with blank lines, so the model sees every word and the prompt
      alternates as chat templates expect: two user messages in a row are one question (the
      ones right before the last message join the query), two assistant messages one answer.
      Merging rather than pairing a question with an empty answer keeps the stored record
      and the prompt free of answers nobody gave. An assistant message with no question
      before it (a greeting) is paired with an empty question.
    """
    if not isinstance(messages, list):
        code = "missing" if messages is None else "invalid_type"
        raise invalid("messages", "'messages' must be an array of messages.", code)
    if not messages:
        raise invalid("messages", "'messages' must contain at least one message.", "empty")
    if len(messages) > MAX_MESSAGES:
        raise invalid("messages", f"'messages' has more than {MAX_MESSAGES} messages.", "too_long")
    limit = settings.CHATGLM["MAX_QUERY_CHARS"]
    system, turns = [], []  # turns: [role, [texts]] with roles alternating
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(where, f"'{where}' must be an object.", "invalid_type")
        role = message.get("role")
        if role not in MESSAGE_ROLES:
            raise invalid(f"{where}.role", f"'{where}.role' must be one of 'system', 'user' or 'assistant' "
                                           f"(got {inputs.safe(repr(role))}).", "invalid_value")
        text = _content(message.get("content"), f"{where}.content", nullable=role == "assistant")
        if len(text) > 4 * limit:
            raise invalid(f"{where}.content", f"'{where}.content' is longer than {4 * limit} characters.", "too_long")
        if role in ("system", "developer"):
            system.append(text)
        elif turns and turns[-1][0] == role:
            turns[-1][1].append(text)
        else:
            turns.append([role, [text]])
    last = messages[-1]
    if not turns or last.get("role") != "user":
        raise invalid("messages", "The last message must be a user message: it is what the model answers.",
                      "last_message_not_user")
    query = _merge(turns.pop()[1])
    if len(query) > limit:
        raise invalid(f"messages[{len(messages) - 1}].content", f"The question is longer than {limit} characters.",
                      "too_long")
    history, question = [], None
    for role, texts in turns:
        text = _merge(texts)
        if role == "user":
            question = text
        else:
            history.append((question or "", text))
            question = None
    # After merging, the roles alternate and the last one before the query is an assistant's,
    # so no question is left unanswered.
    return _merge(system) or None, history, query


def _merge(texts: list[str]) -> str:
    return "\n\n".join(t for t in texts if t)


def _generation_params(data: dict) -> GenerationParams:
    values = {}
    for name, field in NUMBER_PARAMS.items():
        value = params.number(data, field, param=name)  # our range, checked under OpenAI's name
        if value is not None:
            values[field] = value  # max_completion_tokens (later in the table) wins over max_tokens
    return GenerationParams(stop=params.stop_sequences(data.get("stop")), **values)


def _optional(data: dict, name: str, kind: type, what: str):
    value = data.get(name)
    if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise invalid(name, f"'{name}' must be {what}.", "invalid_type")
    return value


class CompletionRequest:
    """A validated chat completion request."""

    def __init__(self, data: dict, info: ModelInfo):
        model_id = data.get("model")
        if model_id is None:
            raise invalid("model", "'model' is required.", "missing")
        if not isinstance(model_id, str):
            raise invalid("model", "'model' must be a string.", "invalid_type")
        self.stream = bool(_optional(data, "stream", bool, "a boolean"))
        n = _optional(data, "n", int, "an integer")
        if n is not None and n != 1:
            raise invalid("n", "Only n=1 is supported: one choice per request.", "unsupported_value")
        _optional(data, "user", str, "a string")
        options = _optional(data, "stream_options", dict, "an object") or {}
        include_usage = options.get("include_usage")
        if include_usage is not None and not isinstance(include_usage, bool):
            raise invalid("stream_options.include_usage", "'stream_options.include_usage' must be a boolean.",
                          "invalid_type")
        self.include_usage = bool(include_usage)  # read only when streaming, as OpenAI sends usage
        self.params = _generation_params(data)
        self.system_prompt, self.history, self.query = conversation(data.get("messages"))
        if model_id != info.model_id:  # last: a malformed request is a 400 whatever its model
            raise model_not_found(model_id, param="model")
        self.model = info.model_id


# -- responses --------------------------------------------------------------------------------


def failure(turn, done: TurnDone) -> ChatError:
    """The error for a turn that did not end with `stop` or `length`."""
    if done.result.finish_reason == "cancelled":
        return ChatError("The generation was cancelled by the server.", status=503, type="server_error",
                         code="cancelled", request_id=turn.id)
    return generation_error(done.result.error, turn.id)


class Completion:
    """The fields every object of one completion shares."""

    def __init__(self, turn, req: CompletionRequest):
        self.id = f"chatcmpl-{turn.id}"
        self.created = int(time.time())
        self.model = req.model
        self.include_usage = req.include_usage

    def head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def message(self, done: TurnDone) -> dict:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": done.result.text, "refusal": None},
            "logprobs": None,
            "finish_reason": done.result.finish_reason,
        }
        return {**self.head("chat.completion"), "choices": [choice], "usage": done.result.usage()}

    def chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        out = {**self.head("chat.completion.chunk"), "choices": [choice]}
        if self.include_usage:
            out["usage"] = None  # as OpenAI does: only the last chunk carries usage
        return out

    def usage_chunk(self, done: TurnDone) -> dict:
        return {**self.head("chat.completion.chunk"), "choices": [], "usage": done.result.usage()}


async def _parse(request) -> tuple[CompletionRequest, TurnInput]:
    owner = await api_caller(request, allow_session=False)
    data = read_json(request)
    req = CompletionRequest(data, await served_model())
    inp = TurnInput(
        owner=owner,
        source=Source.OPENAI,
        query=req.query,
        params=req.params,
        history=params.used_history(req.history),  # what cannot reach the model is not stored either
        system_prompt=req.system_prompt,
        store=settings.CHATGLM["STORE_API_TURNS"],
    )
    return req, inp


@csrf_exempt  # programs only: api_caller never uses the session here
@json_errors()
@allow("POST")
async def chat_completions(request):
    req, inp = await _parse(request)
    turn = await start_turn(inp)
    if req.stream:
        return sse.response(_stream_body(turn, Completion(turn, req)), turn)
    try:
        async for event in turn.events():
            if isinstance(event, TurnDone):
                if event.result.finish_reason not in ("stop", "length"):
                    raise failure(turn, event)
                return JsonResponse(Completion(turn, req).message(event), json_dumps_params={"ensure_ascii": False})
    finally:
        turn.cancel()  # the client went away before the answer: stop generating for nobody


async def _stream_body(turn, completion: Completion):
    """Chunks as OpenAI sends them; never raises (PITFALLS #3); a disconnect cancels the turn."""
    try:
        yield sse.event(None, completion.chunk({"role": "assistant", "content": ""}))
        async for event in sse.turn_events(turn, settings.CHATGLM["PING_SECONDS"]):
            if isinstance(event, str):
                yield event
            elif isinstance(event, TextDelta):
                yield sse.event(None, completion.chunk({"content": event.text}))
            elif isinstance(event, TurnDone):
                if event.result.finish_reason not in ("stop", "length"):
                    yield sse.event(None, {"error": failure(turn, event).as_dict()})
                    return
                yield sse.event(None, completion.chunk({}, event.result.finish_reason))
                if completion.include_usage:
                    yield sse.event(None, completion.usage_chunk(event))
                yield sse.event(None, "[DONE]")
    except Exception as exc:  # noqa: BLE001 - never let a stream body raise (PITFALLS #3)
        yield sse.event(None, {"error": unexpected_error(exc, "chat completion stream").as_dict()})
    finally:
        turn.cancel()  # a client that disconnects stops its generation at the next decode step


urlpatterns = [
    path("v1/chat/completions", chat_completions, name="openai-chat-completions"),
    path("v1/models", models, name="openai-models"),
    # `path`: Hugging Face ids have a slash (THUDM/chatglm3-6b).
    path("v1/models/<path:model_id>", model, name="openai-model"),
]
