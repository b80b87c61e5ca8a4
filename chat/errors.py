"""The one error type that adapters render: as JSON (4xx), an SSE `error` event or a WS frame."""

from __future__ import annotations


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
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def as_dict(self) -> dict:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


def invalid(param: str | None, message: str, code: str = "invalid_value") -> ChatError:
    return ChatError(message, param=param, code=code)


def not_found(message: str = "Conversation not found.", param: str | None = "conversation_id") -> ChatError:
    # 404 for both unknown and foreign ids: nobody can tell another user's id exists.
    return ChatError(message, status=404, type="not_found_error", param=param, code="not_found")
