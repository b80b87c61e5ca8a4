"""The original demo's API, word for word: POST /chat, POST /stream (SSE), GET /clear.

Thin: parse and validate, call `turns`, encode. Clients of the Flask/FastAPI demo keep
working: the same fields, `event: delta` with a JSON `data`, and a final event with
`finished: true`; new fields (conversation_id, finish_reason, usage) are additions.
"""

from __future__ import annotations

from django.http import JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from .. import live, params, tree
from ..errors import ChatError, generation_error, invalid
from ..turns import Protocol, TurnDone, TurnInput, clear_engine_cache, start_turn
from . import sse
from ..owners import http_caller
from .common import allow, json_errors, json_response, read_json

SEED_ENVELOPE = {"success": False}


class SeedTurn:
    """A turn of the seed API and the history its client sent.

    Only the last CHATGLM_MAX_HISTORY pairs of a client's history can reach the model, so
    only those go into the turn, and so into the database: older pairs are neither sent nor
    stored (a client cannot fill the database with pairs nobody reads). The answer still
    echoes the whole history, as the original demo's clients expect, and `history_truncated`
    counts every pair left out.
    """

    def __init__(self, inp: TurnInput, history: list[tuple[str, str]]):
        self.input, self.history = inp, history
        self.dropped = len(history) - len(inp.history or [])


async def _turn_input(request) -> SeedTurn:
    owner = await http_caller(request)
    data = read_json(request)
    query = params.text(data, "query")
    conversation_id = params.conversation_id(data.get("conversation_id"))
    if conversation_id is not None and data.get("history"):
        raise invalid("history", "Send either 'history' or 'conversation_id', not both.", "conflict")
    history = params.history_pairs(data.get("history"))
    inp = TurnInput(
        owner=owner,
        protocol=Protocol.SEED,
        query=query,
        params=params.generation_params(data),
        history=params.used_history(history),
        conversation_id=conversation_id,
    )
    return SeedTurn(inp, history)


async def _start(request):
    seed = await _turn_input(request)
    return seed, await start_turn(seed.input)


def final_fields(seed: SeedTurn, turn, done: TurnDone) -> dict:
    history = seed.history if seed.input.conversation_id is None else turn.history
    # A stored answer that went through tool calls is shown as its final text: the demo's
    # clients read every answer as a string (docs/tools.md).
    history = [(question, tree.final_text(answer)) for question, answer in history]
    return {
        "query": turn.query,
        "response": done.result.text,
        "history": [list(pair) for pair in history] + [[turn.query, done.result.text]],
        "conversation_id": done.conversation_id,
        "finish_reason": done.result.finish_reason,
        "usage": done.result.usage(),
        "history_truncated": turn.history_truncated + seed.dropped,
    }


@csrf_exempt  # http_caller enforces CSRF for requests that use the session cookie
@json_errors(SEED_ENVELOPE)
@allow("POST")
async def chat(request):
    seed, turn = await _start(request)
    done = await turn.outcome()
    if done.result.finish_reason == "error":
        raise generation_error(done.result.error, turn.id)
    return json_response({**final_fields(seed, turn, done), "success": True})


@csrf_exempt
@json_errors(SEED_ENVELOPE)  # errors before the stream opens are JSON, like /chat's
@allow("POST")
async def stream(request):
    seed, turn = await _start(request)
    if turn.owner.is_person:
        live.ensure_broadcast(turn)  # the page's fallback: the person's other tabs see it live too
    return sse.turn_response(turn, SeedEncoder(seed, turn))


class SeedEncoder(sse.Encoder):
    """The demo's events: `delta` with the answer so far, then one with `finished: true`."""

    def __init__(self, seed: SeedTurn, turn):
        self.seed, self.turn = seed, turn
        self.response = ""  # the answer so far as this client has seen it (turn.text may be further on)

    def delta(self, index: int, delta) -> list[str]:
        self.response += delta.text
        return [sse.event("delta", {"delta": delta.text, "response": self.response, "finished": False})]

    def done(self, index: int, done: TurnDone) -> list[str]:
        if done.result.finish_reason == "error":
            return [self.failed(generation_error(done.result.error, self.turn.id))]
        return [sse.event("delta", {"delta": "", **final_fields(self.seed, self.turn, done), "finished": True})]

    def failed(self, error: ChatError) -> str:
        return sse.event("error", {**SEED_ENVELOPE, "error": error.as_dict()})


@csrf_exempt
@json_errors(SEED_ENVELOPE)
@allow("GET", "POST")
async def clear(request):
    """Free cached accelerator memory (the seed's /clear); a no-op on CPU."""
    await http_caller(request)
    clear_engine_cache()
    return JsonResponse({"success": True})


urlpatterns = [
    path("chat", chat, name="seed-chat"),
    path("stream", stream, name="seed-stream"),
    path("clear", clear, name="seed-clear"),
]
