"""Hostile input, table-driven over every endpoint and frame type: each case is refused with a
4xx JSON error that names the field (an `error` frame on a WebSocket, which stays open), and
the chat tables are exactly as they were. Runs on SQLite and, with DATABASE_URL, PostgreSQL.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from django.test import AsyncClient

from .conftest import Reply, dump_chat_tables, foreign_conversation, http_send, ws_send

pytestmark = pytest.mark.django_db(transaction=True)

FOREIGN = "00000000-0000-4000-8000-00000000f0f0"  # replaced by a stranger's conversation id
OWN = "00000000-0000-4000-8000-00000000a0a0"  # replaced by the caller's own conversation id

# name: (method, path, a valid body, its text fields, a float field, an integer field)
ENDPOINTS: dict[str, tuple] = {
    "chat": ("POST", "/chat", {"query": "hello", "history": [["q", "a"]]},
             [["query"], ["history", 0, 0], ["history", 0, 1]], ["temperature"], ["max_new_tokens"]),
    "stream": ("POST", "/stream", {"query": "hello", "history": [["q", "a"]]},
               [["query"], ["history", 0, 0], ["history", 0, 1]], ["temperature"], ["max_new_tokens"]),
    "openai": ("POST", "/v1/chat/completions",
               {"model": "fake", "messages": [{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "stop": ["zz"], "user": "u1"},
               [["model"], ["messages", 0, "content"], ["messages", 0, "role"], ["messages", 1, "content", 0, "text"],
                ["messages", 1, "content", 0, "type"], ["stop", 0], ["user"]],
               ["temperature"], ["max_tokens"]),
    "conversation-create": ("POST", "/api/conversations", {"title": "t", "system_prompt": "s", "settings": {}},
                            [["title"], ["system_prompt"]], ["settings", "temperature"], ["settings", "max_length"]),
    "conversation-update": ("PATCH", f"/api/conversations/{OWN}", {"title": "t", "system_prompt": "s"},
                            [["title"], ["system_prompt"]], ["settings", "top_p"], ["settings", "max_new_tokens"]),
    "ws-chat": ("WS", None, {"type": "chat", "request_id": "r1", "query": "hello", "params": {}},
                [["type"], ["request_id"], ["query"], ["conversation_id"]], ["params", "temperature"],
                ["params", "max_new_tokens"]),
    "ws-subscribe": ("WS", None, {"type": "subscribe", "request_id": "r1", "conversation_id": OWN},
                     [["type"], ["request_id"], ["conversation_id"]], None, None),
    "ws-stop": ("WS", None, {"type": "stop", "request_id": "r1", "conversation_id": OWN},
                [["type"], ["request_id"], ["conversation_id"]], None, None),
}
HTTP = [name for name, spec in ENDPOINTS.items() if spec[0] != "WS"]


def param_of(path: list) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def with_value(body: dict, path: list, value: Any) -> dict:
    body = copy.deepcopy(body)
    target = body
    for part in path[:-1]:
        target = target.setdefault(part, {}) if isinstance(target, dict) else target[part]
    target[path[-1]] = value
    return body


def raw(body: Any) -> bytes:
    """JSON as a client may send it: `ensure_ascii` writes a lone surrogate as `\\ud800`."""
    return json.dumps(body).encode()


# (id, endpoint, raw body, expected status, expected code or None, expected param or None)
CASES: list[tuple] = []


def case(name: str, endpoint: str, body: bytes, status: int, code: str | None = None, param: str | None = None):
    CASES.append((f"{endpoint}-{name}", endpoint, body, status, code, param))


for endpoint, (method, _, valid, texts, float_path, int_path) in ENDPOINTS.items():
    ws = method == "WS"
    for path in texts:
        where = param_of(path)
        case(f"surrogate-in-{where}", endpoint, raw(with_value(valid, path, "ok \ud800 ok")), 400, "invalid_unicode", where)
        case(f"low-surrogate-in-{where}", endpoint, raw(with_value(valid, path, "\udfff")), 400, "invalid_unicode", where)
        case(f"nul-in-{where}", endpoint, raw(with_value(valid, path, "a\u0000b")), 400, "invalid_character", where)
    case("surrogate-in-a-key", endpoint, raw({**valid, "\ud800": 1}), 400, "invalid_unicode", "\\ud800")
    case("nul-in-a-key", endpoint, raw({**valid, "x\u0000": 1}), 400, "invalid_character", "x\\x00")
    # Deeper than any parser should recurse; a frame is smaller, but still far past the limit.
    depth = 15_000 if ws else 100_000
    case("deep-nesting", endpoint, b'{"x": ' + b"[" * depth + b"]" * depth + b"}", 400, "invalid_json")
    case("deep-objects", endpoint, b'{"a":' * (depth // 4) + b"1" + b"}" * (depth // 4), 400, "invalid_json")
    case("truncated", endpoint, raw(valid)[:-3], 400, "invalid_json")
    case("not-an-object", endpoint, b"[1, 2]", 400, "invalid_json")
    case("nan", endpoint, raw(valid)[:-1] + b', "x": NaN}', 400, "invalid_json")
    case("huge-integer-literal", endpoint, raw(valid)[:-1] + b', "x": 1' + b"0" * 5000 + b"}", 400, "invalid_json")
    case("invalid-utf8", endpoint, raw(valid)[:-1] + b', "x": "\xff\xfe\xc3"}', 400,
         "invalid_frame" if ws else "invalid_json")
    if not ws:
        case("blank-body", endpoint, b" ", 400, "invalid_json")
        case("utf16-body", endpoint, json.dumps(valid).encode("utf-16"), 400, "invalid_json")
    if float_path:
        where = param_of(float_path)
        case("huge-float", endpoint, raw(with_value(valid, float_path, "X")).replace(b'"X"', b"1e999"),
             400, "invalid_value", where)
        case("negative-float", endpoint, raw(with_value(valid, float_path, -0.5)), 400, "invalid_value", where)
        case("float-as-string", endpoint, raw(with_value(valid, float_path, "0.5")), 400, "invalid_type", where)
    if int_path:
        where = param_of(int_path)
        case("huge-int", endpoint, raw(with_value(valid, int_path, 10**40)), 400, "invalid_value", where)
        case("negative-int", endpoint, raw(with_value(valid, int_path, -1)), 400, "invalid_value", where)
        case("fractional-int", endpoint, raw(with_value(valid, int_path, 2.5)), 400, "invalid_type", where)
    for path in texts:
        if path[-1] in ("type", "role", "conversation_id"):
            continue  # their own cases below
        where = param_of(path)
        # The error names the field or the item that holds it (`stop` for `stop[0]`).
        if not (ws and path == ["request_id"]):  # a number is a valid request id
            case(f"number-as-{where}", endpoint, raw(with_value(valid, path, 5)), 400, "invalid_type", "~" + where)
        case(f"object-as-{where}", endpoint, raw(with_value(valid, path, {"a": 1})), 400, "invalid_type", "~" + where)

# Wrong types and values of the fields that are not free text.
for endpoint in ("chat", "stream"):
    case("history-not-a-list", endpoint, raw({"query": "q", "history": "q a"}), 400, "invalid_type", "history")
    case("history-pair-of-one", endpoint, raw({"query": "q", "history": [["q"]]}), 400, "invalid_type", "history[0]")
    case("conversation-id-number", endpoint, raw({"query": "q", "conversation_id": 7}), 400, "invalid_type",
         "conversation_id")
    case("empty-query", endpoint, raw({"query": "   "}), 400, "empty", "query")
    case("missing-query", endpoint, raw({}), 400, "missing", "query")
    case("someone-elses-conversation", endpoint, raw({"query": "q", "conversation_id": FOREIGN}), 404, "not_found",
         "conversation_id")
case("messages-not-a-list", "openai", raw({"model": "fake", "messages": "hi"}), 400, "invalid_type", "messages")
case("message-not-an-object", "openai", raw({"model": "fake", "messages": [5]}), 400, "invalid_type", "messages[0]")
case("unknown-role", "openai", raw({"model": "fake", "messages": [{"role": "root", "content": "x"}]}), 400,
     "invalid_value", "messages[0].role")
case("image-part", "openai", raw({"model": "fake", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
     400, "unsupported_content", "messages[0].content[0].type")
case("stream-not-a-boolean", "openai", raw({"model": "fake", "messages": [{"role": "user", "content": "x"}],
                                            "stream": "yes"}), 400, "invalid_type", "stream")
case("n-past-the-server-limit", "openai", raw({"model": "fake", "messages": [{"role": "user", "content": "x"}], "n": 9}),
     400, "invalid_value", "n")
case("huge-role", "openai", raw({"model": "fake", "messages": [{"role": "r" * 100_000, "content": "x"}]}), 400,
     "invalid_value", "messages[0].role")
case("huge-unknown-field", "conversation-create", raw({"f" * 100_000: 1}), 400, "unknown_field")
case("unknown-model", "openai", raw({"model": "gpt-\u001b[31m", "messages": [{"role": "user", "content": "x"}]}), 404,
     "model_not_found", "model")
for endpoint in ("conversation-create", "conversation-update"):
    case("settings-not-an-object", endpoint, raw({"settings": [1]}), 400, "invalid_type", "settings")
    case("unknown-setting", endpoint, raw({"settings": {"evil": 1}}), 400, "unknown_field", "settings.evil")
    case("unknown-field", endpoint, raw({"owner": "bob"}), 400, "unknown_field", "owner")
    case("title-with-newline", endpoint, raw({"title": "a\nb"}), 400, "invalid_character", "title")
    case("title-with-escape", endpoint, raw({"title": "\u001b[2Jx"}), 400, "invalid_character", "title")
case("someone-elses-conversation", "conversation-update", raw({"title": "mine now"}), 404, "not_found")
case("request-id-object", "ws-chat", raw({"type": "chat", "query": "q", "request_id": {"a": 1}}), 400,
     "invalid_type", "request_id")
case("unknown-type", "ws-chat", raw({"type": "shutdown"}), 400, "unknown_type", "type")
case("params-not-an-object", "ws-chat", raw({"type": "chat", "query": "q", "params": "hot"}), 400, "invalid_type",
     "params")
case("binary-frame", "ws-chat", b"\x00\x01\xff", 400, "invalid_frame")
case("oversized-frame", "ws-chat", raw({"type": "chat", "query": "x" * 40_000}), 400, "too_large")
for endpoint in ("ws-chat", "ws-subscribe", "ws-stop"):
    case("someone-elses-conversation", endpoint,
         raw({**ENDPOINTS[endpoint][2], "conversation_id": FOREIGN, "request_id": None}), 404, "not_found",
         "conversation_id")
# Content types a JSON endpoint refuses (the body itself is valid JSON).
for endpoint in HTTP:
    body = raw(ENDPOINTS[endpoint][2])
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "",
                         "application/json; charset=latin-1"):
        CASES.append((f"{endpoint}-content-type-{content_type.split(';')[0] or 'none'}"
                      f"{'-latin1' if 'latin' in content_type else ''}", endpoint, body, 415,
                      "unsupported_media_type", None, content_type))


async def _send(endpoint: str, body: bytes, content_type: str, client: AsyncClient, ids: dict) -> Reply:
    method, path, *_ = ENDPOINTS[endpoint]
    for placeholder, real in ids.items():
        body = body.replace(placeholder.encode(), real.encode())
        path = path and path.replace(placeholder, real)
    if method == "WS":
        return await ws_send(body)
    return await http_send(client, method, path, body, content_type)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_refused_and_nothing_stored(engine, case):
    _, endpoint, body, status, code, param, *content_type = case
    client = AsyncClient()
    own = FOREIGN
    if endpoint.startswith("conversation-update"):
        created = await client.post("/api/conversations", {"title": "mine"}, content_type="application/json")
        own = created.json()["id"]
    stranger = await foreign_conversation()
    if "someone-elses" in case[0]:
        own = str(stranger.id)
    ids = {OWN: own, FOREIGN: str(stranger.id)}
    before = await dump_chat_tables()

    reply = await _send(endpoint, body, (content_type or ["application/json"])[0], client, ids)

    assert reply.error is not None, reply
    assert set(reply.error) == {"message", "type", "param", "code"} and reply.error["message"]
    if reply.status is None:
        assert reply.socket_open, "the socket must stay open after a bad frame"
    else:
        assert reply.status == status, reply
        assert reply.content_type.startswith("application/json")  # also /stream: no HTML page, no stream
    if code is not None:
        assert reply.error["code"] == code, reply.error
    if param is not None and param.startswith("~"):
        assert reply.error["param"] and param[1:].startswith(reply.error["param"]), reply.error
    elif param is not None:
        assert reply.error["param"] == param, reply.error
    json.dumps(reply.error, ensure_ascii=False).encode("utf-8")  # the error itself is valid text
    assert len(reply.error["message"]) < 1000  # nothing echoed back at length
    assert await dump_chat_tables() == before
