"""The chat WebSocket's outgoing frames (docs/websocket.md), built in one place for the
socket's own turn (chat.consumers.chat) and for the turns it follows (chat.live)."""

from __future__ import annotations

from ..errors import ChatError, generation_error


def _located(frame: dict, conversation_id) -> dict:
    """A followed turn's frames name their conversation; the asking socket's own do not."""
    if conversation_id is not None:
        frame["conversation_id"] = conversation_id
    return frame


def start(request_id, conversation_id, message_id, **extra) -> dict:
    return {"type": "start", "request_id": request_id, "conversation_id": conversation_id,
            "message_id": message_id, **extra}


def queued(request_id, position: int, conversation_id=None) -> dict:
    return _located({"type": "queued", "request_id": request_id, "position": position}, conversation_id)


def delta(request_id, text: str, response: str, conversation_id=None) -> dict:
    return _located({"type": "delta", "request_id": request_id, "delta": text, "response": response},
                    conversation_id)


def end(request_id, done: dict) -> dict:
    """`done`, or `error` (typed by chat.errors) when the model failed; the partial answer is kept.
    `done` has the fields of chat.live.done_fields."""
    fields = {"conversation_id": done["conversation_id"], "message_id": done["message_id"]}
    if done["finish_reason"] == "error":
        failure = generation_error(done.get("error") or "", done.get("turn_id"))
        return {"type": "error", "request_id": request_id, "error": failure.as_dict(),
                "response": done["response"], **fields}
    return {"type": "done", "request_id": request_id, "response": done["response"],
            "finish_reason": done["finish_reason"], "usage": done["usage"], **fields}


def error(failure: ChatError, request_id) -> dict:
    frame = {"type": "error", "request_id": request_id, "error": failure.as_dict()}
    if failure.retry_after:
        frame["retry_after"] = failure.retry_after
    return frame
