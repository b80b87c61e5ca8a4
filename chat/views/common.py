"""What every JSON view shares: reading the body, answering JSON, rendering errors (also for
the SSE views before their stream opens), the one 405, and the page API's dispatch by method."""

from __future__ import annotations

from functools import wraps

from django.core.exceptions import RequestDataTooBig
from asgiref.sync import sync_to_async
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .. import exports, inputs, selectors
from ..errors import ChatError, method_not_allowed, unexpected_error
from ..owners import check_csrf
from ..turns import live_turn


def read_json(request) -> dict:
    """The request's JSON object body, checked by `chat.inputs`, or ChatError 400/413/415."""
    content_type = request.content_type or ""
    if content_type != "application/json":
        raise ChatError(
            f"Send a JSON body with 'Content-Type: application/json' (got {inputs.safe(content_type) or 'none'!r}).",
            status=415, code="unsupported_media_type",
        )
    charset = (request.content_params or {}).get("charset", "utf-8").lower()
    if charset.replace("-", "") != "utf8":
        raise ChatError(f"Send the JSON body in UTF-8 (got charset {inputs.safe(charset)!r}).",
                        status=415, code="unsupported_media_type")
    try:
        body = request.body
    except RequestDataTooBig:
        raise ChatError("The request body is too large.", status=413, code="too_large") from None
    return inputs.decode_json(body)


def error_response(error: ChatError, envelope: dict | None = None) -> JsonResponse:
    """`{"error": {...}}` (OpenAI's shape) plus any `envelope` fields, with Retry-After if set."""
    response = JsonResponse({**(envelope or {}), "error": error.as_dict()}, status=error.status,
                            json_dumps_params={"ensure_ascii": False})
    if error.retry_after:
        response["Retry-After"] = str(error.retry_after)
    if error.request_id:
        response["X-Request-ID"] = error.request_id
    if error.allow:
        response["Allow"] = ", ".join(error.allow)
    return response


def json_response(data: dict, status: int = 200) -> JsonResponse:
    return JsonResponse(data, status=status, json_dumps_params={"ensure_ascii": False})


def json_errors(envelope: dict | None = None):
    """Turn ChatError (and any unexpected exception) raised by an async view into a JSON answer."""

    def decorate(view):
        @wraps(view)
        async def wrapper(request, *args, **kwargs):
            try:
                return await view(request, *args, **kwargs)
            except ChatError as error:
                return error_response(error, envelope)
            except Exception as exc:  # noqa: BLE001 - never a traceback page for an API client
                return error_response(unexpected_error(exc, view.__name__), envelope)

        return wrapper

    return decorate


def allow(*methods: str):
    """Only these HTTP methods (inside json_errors): any other is a JSON 405 with `Allow`."""

    def decorate(view):
        @wraps(view)
        async def wrapper(request, *args, **kwargs):
            if request.method not in methods:
                raise method_not_allowed(request.method, methods)
            return await view(request, *args, **kwargs)

        return wrapper

    return decorate


def methods(**handlers):
    """The page API's views: one URL, one handler per HTTP method (others: the JSON 405), and
    Django's CSRF check for unsafe methods, failing as JSON like every other error here."""

    @csrf_exempt  # checked by chat.owners.check_csrf, so that a failure is JSON
    @json_errors()
    async def view(request, *args, **kwargs):
        handler = handlers.get(request.method)
        if handler is None:
            raise method_not_allowed(request.method, handlers)
        check_csrf(request)
        return await handler(request, *args, **kwargs)

    return view


@sync_to_async
def conversation_detail(owner, conversation_id) -> dict:
    """A conversation as the page API answers it: its messages, and whether an answer is generating."""
    conversation = selectors.owned_conversation(owner, conversation_id)
    messages = list(selectors.messages_of(conversation))
    generating = live_turn(str(conversation.id)) is not None or selectors.answer_unfinished(conversation)
    return {**exports.conversation_data(conversation, messages), "generating": generating}
