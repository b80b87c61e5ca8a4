"""The one error type that adapters render: as JSON (4xx/5xx), an SSE `error` event or a WS frame.

Failed generations are typed here, once, for every protocol: the engine reports a short code
in `GenerationResult.error` (never an upstream's text), and `generation_error()` turns it into
the status and the generic message clients see, with the request id that the log line of the
details carries too.
"""

from __future__ import annotations

import logging
import uuid

log = logging.getLogger(__name__)

# GenerationResult.error codes (set by the engine and backends) -> (HTTP status, error code, message).
UPSTREAM_BAD_RESPONSE = "upstream_bad_response"
UPSTREAM_UNAVAILABLE = "upstream_unavailable"
UPSTREAM_TIMEOUT = "upstream_timeout"
GENERATION_TIMEOUT = "generation_timeout"
NOT_SAVED = "not_saved"
SERVER_SHUTDOWN = "server_shutdown"
GENERATION_ERRORS: dict[str, tuple[int, str]] = {
    UPSTREAM_BAD_RESPONSE: (502, "The upstream model server answered with an error."),
    UPSTREAM_UNAVAILABLE: (503, "The upstream model server cannot be reached."),
    UPSTREAM_TIMEOUT: (504, "The upstream model server did not answer in time."),
    GENERATION_TIMEOUT: (504, "The model stopped making progress and the answer was ended."),
    NOT_SAVED: (503, "The answer could not be saved; it is not part of the conversation."),
    SERVER_SHUTDOWN: (503, "The server is restarting; the answer was interrupted. Try again shortly."),
}


class ChatError(Exception):
    """A request the service refuses or a turn that failed, with OpenAI's error fields."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        request_id: str | None = None,
        allow: tuple[str, ...] = (),
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.request_id = request_id
        self.allow = allow  # for a 405: the methods the URL accepts (the Allow header)

    def as_dict(self) -> dict:
        # OpenAI's four fields only (its clients parse them); the request id is in the message
        # and, over HTTP, the X-Request-ID header.
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


def invalid(param: str | None, message: str, code: str = "invalid_value") -> ChatError:
    return ChatError(message, param=param, code=code)


def not_found(message: str = "Conversation not found.", param: str | None = "conversation_id") -> ChatError:
    # 404 for both unknown and foreign ids: nobody can tell another user's id exists.
    return ChatError(message, status=404, type="not_found_error", param=param, code="not_found")


def generation_error(error: str, request_id: str | None) -> ChatError:
    """What clients see of a turn that ended with finish_reason `error` (GenerationResult.error)."""
    status, message = GENERATION_ERRORS.get(error, (500, "The model failed while generating."))
    code = error if error in GENERATION_ERRORS else "generation_failed"
    log.warning("turn %s failed: %s", request_id, error or "no reason given")
    return ChatError(f"{message} (request id {request_id})" if request_id else message, status=status,
                     type="server_error", code=code, request_id=request_id)


def unfinished_answer(finish_reason: str, error: str, request_id: str | None) -> ChatError:
    """The error for an answer that ended by neither `stop` nor `length`, for protocols that
    have no way to deliver such an answer (the OpenAI API): a failure, or a cancellation by the
    server (its clients cancel by closing the connection, and then read nothing)."""
    if finish_reason == "cancelled":
        return ChatError("The generation was cancelled by the server.", status=503, type="server_error",
                         code="cancelled", request_id=request_id)
    return generation_error(error, request_id)


def turn_in_progress() -> ChatError:
    """409: the conversation has an answer generating (one at a time per conversation)."""
    return ChatError("An answer is still being generated in this conversation.", status=409,
                     type="invalid_request_error", param="conversation_id", code="turn_in_progress")


def method_not_allowed(method: str, allowed) -> ChatError:
    """405 for a method the URL does not serve; the JSON answer carries `Allow`."""
    allowed = tuple(sorted(allowed))
    return ChatError(f"Method {method} is not allowed here; use {', '.join(allowed)}.", status=405,
                     code="method_not_allowed", allow=allowed)


def model_unavailable(detail: str) -> ChatError:
    """503 for a model that cannot be loaded or reached; `detail` (hosts, paths) goes to the log."""
    log.warning("model unavailable: %s", detail)
    return ChatError("The model is not available right now; try again later.", status=503,
                     type="server_error", code="model_unavailable", retry_after=10)


def internal_error(request_id: str | None = None) -> ChatError:
    message = f"Internal server error (request id {request_id})." if request_id else "Internal server error."
    return ChatError(message, status=500, type="server_error", code="internal_error",
                     request_id=request_id)


def database_unavailable() -> ChatError:
    return ChatError("The database is not available right now; try again later.", status=503,
                     type="server_error", code="database_unavailable", retry_after=5)


def unexpected_error(exc: BaseException, where: str) -> ChatError:
    """The client's view of an exception nobody expected: the database being down is a 503;
    anything else a 500 whose request id finds the traceback in the log."""
    from django.db import DatabaseError  # here, so that importing this module needs no settings

    if isinstance(exc, DatabaseError):
        log.error("database error in %s: %s", where, exc)
        return database_unavailable()
    request_id = uuid.uuid4().hex
    log.error("unexpected error in %s (request id %s)", where, request_id, exc_info=exc)
    return internal_error(request_id)
