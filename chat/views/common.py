"""Request parsing and error rendering shared by the JSON views (and the SSE views, before
their stream opens)."""

from __future__ import annotations

from functools import wraps

from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse

from .. import inputs
from ..errors import ChatError, unexpected_error


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
    return response


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
