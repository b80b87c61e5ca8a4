"""Request parsing and error rendering shared by the JSON views."""

from __future__ import annotations

import json
import logging
from functools import wraps

from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse

from ..errors import ChatError

log = logging.getLogger(__name__)


def read_json(request) -> dict:
    """The request's JSON object body, or ChatError 400/413/415."""
    content_type = request.content_type or ""
    if content_type != "application/json":
        raise ChatError(
            f"Send a JSON body with 'Content-Type: application/json' (got {content_type or 'none'!r}).",
            status=415, code="unsupported_media_type",
        )
    try:
        body = request.body
    except RequestDataTooBig:
        raise ChatError("The request body is too large.", status=413, code="too_large") from None
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ChatError(f"Malformed JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ChatError("The JSON body must be an object.", code="invalid_json")
    return data


def error_response(error: ChatError, envelope: dict | None = None) -> JsonResponse:
    """`{"error": {...}}` (OpenAI's shape) plus any `envelope` fields, with Retry-After if set."""
    response = JsonResponse({**(envelope or {}), "error": error.as_dict()}, status=error.status,
                            json_dumps_params={"ensure_ascii": False})
    if error.retry_after:
        response["Retry-After"] = str(error.retry_after)
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
            except Exception:  # noqa: BLE001 - never a traceback page for an API client
                log.exception("unexpected error in %s", view.__name__)
                return error_response(
                    ChatError("Internal server error.", status=500, type="server_error", code="internal_error"),
                    envelope,
                )

        return wrapper

    return decorate
