"""Validation of request fields shared by every protocol: strings, history, generation parameters."""

from __future__ import annotations

import math
import uuid
from typing import Any

from django.conf import settings

from . import inputs
from .engine import Constraint, GenerationParams
from .errors import invalid, not_found

# (minimum, maximum) of each numeric generation parameter.
RANGES: dict[str, tuple[float, float]] = {
    "max_new_tokens": (1, 32768),
    "max_length": (1, 131072),
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "top_k": (0, 1000),
    "repetition_penalty": (0.5, 2.0),
    "seed": (-(2**63), 2**63 - 1),
}
INTEGER_PARAMS = {"max_new_tokens", "max_length", "top_k", "seed"}
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 200
MAX_HISTORY_PAIRS = 1000


def number(data: dict, name: str, param: str | None = None, where: str = "") -> float | int | None:
    """Parameter `name` (sent as `param`, when the protocol calls it otherwise) as a number
    in its range, or None when absent or null. Errors name it `where + param` (`params.`)."""
    key = param or name
    value = data.get(key)
    if value is None:
        return None
    param = where + key
    integer = name in INTEGER_PARAMS
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(param, f"'{param}' must be {'an integer' if integer else 'a number'}.", "invalid_type")
    if integer and isinstance(value, float):
        if not value.is_integer():
            raise invalid(param, f"'{param}' must be an integer.", "invalid_type")
        value = int(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(param, f"'{param}' must be a finite number.")
    low, high = RANGES[name]
    if not low <= value <= high:
        raise invalid(param, f"'{param}' must be between {low} and {high}.")
    return value


def stop_sequences(value: Any, param: str = "stop") -> tuple[str, ...]:
    """Stop strings: one string or an array of them; errors name `param`."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid(param, f"'{param}' must be a string or an array of strings.", "invalid_type")
    if len(items) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_CHARS for s in items):
        raise invalid(param, f"'{param}' takes at most {MAX_STOP_SEQUENCES} strings of {MAX_STOP_CHARS} characters.")
    return tuple(s for s in items if s)


def generation_params(data: dict, renames: dict[str, str] | None = None, where: str = "") -> GenerationParams:
    """GenerationParams from a request body (or its object `where`, as `params.`); `renames`
    maps our names to the protocol's."""
    renames = renames or {}
    values = {name: number(data, name, renames.get(name, name), where) for name in RANGES}
    stop = renames.get("stop", "stop")
    fmt = data.get("response_format")  # absent or null: no constraint
    return GenerationParams(stop=stop_sequences(data.get(stop), where + stop),
                            constraint=None if fmt is None else response_format(fmt, where + "response_format"),
                            **values)


def response_format(value: Any, param: str = "response_format") -> Constraint | None:
    """OpenAI's chat `response_format` (every protocol takes it under this name): {"type":
    "text"} (None: no constraint), {"type": "json_object"}, or {"type": "json_schema",
    "json_schema": {"name", "schema", "strict", "description"}}; null: none."""
    if value is None:
        return None
    kind = _format_type(value, param)
    if kind != "json_schema":
        return _simple_format(kind, value, param)
    _only_keys(value, {"type", "json_schema"}, param)
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid(f"{param}.json_schema", f"'{param}.json_schema' must be an object.", "invalid_type")
    return _json_schema(spec, f"{param}.json_schema")


def text_format(value: Any, param: str = "text.format") -> Constraint | None:
    """The Responses API's `text.format`: the same formats, the json_schema one flat
    ({"type": "json_schema", "name", "schema", "strict", "description"})."""
    kind = _format_type(value, param)
    if kind != "json_schema":
        return _simple_format(kind, value, param)
    return _json_schema({k: v for k, v in value.items() if k != "type"}, param)


def _format_type(value: Any, param: str) -> str:
    if not isinstance(value, dict):
        raise invalid(param, f"'{param}' must be an object.", "invalid_type")
    kind = value.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise invalid(f"{param}.type", f"'{param}.type' must be one of 'text', 'json_object', 'json_schema'.")
    return kind


def _simple_format(kind: str, value: dict, param: str) -> Constraint | None:
    _only_keys(value, {"type"}, param)
    return Constraint.json_object() if kind == "json_object" else None


def _json_schema(spec: dict, param: str) -> Constraint:
    _only_keys(spec, {"name", "schema", "strict", "description"}, param)
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise invalid(f"{param}.name", f"'{param}.name' must be a non-empty string.", "invalid_type")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise invalid(f"{param}.strict", f"'{param}.strict' must be a boolean.", "invalid_type")
    if spec.get("description") is not None and not isinstance(spec["description"], str):
        raise invalid(f"{param}.description", f"'{param}.description' must be a string.", "invalid_type")
    # OpenAI's schema is optional (any JSON then); `strict` changes nothing here: the grammar
    # always holds the answer to the schema.
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise invalid(f"{param}.schema", f"'{param}.schema' must be a JSON Schema (an object).", "invalid_type")
    return Constraint.of_schema(schema)


def _only_keys(value: dict, keys: set[str], param: str) -> None:
    for key in value:
        if key not in keys:
            where = f"{param}.{inputs.safe(str(key))}"
            raise invalid(where, f"Unrecognized request argument supplied: {where}.", "unknown_parameter")


def text(data: dict, name: str, *, required: bool = True, max_chars: int | None = None) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        if value is None:
            raise invalid(name, f"'{name}' is required.", "missing")
        raise invalid(name, f"'{name}' must be a string.", "invalid_type")
    limit = max_chars or settings.CHATGLM["MAX_QUERY_CHARS"]
    if required and not value.strip():
        raise invalid(name, f"'{name}' must not be empty.", "empty")
    if len(value) > limit:
        raise invalid(name, f"'{name}' is longer than {limit} characters.", "too_long")
    return value


def history_pairs(value: Any, param: str = "history") -> list[tuple[str, str]]:
    """The seed API's history: a list of [query, response] string pairs."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(param, f"'{param}' must be an array of [query, response] pairs.", "invalid_type")
    if len(value) > MAX_HISTORY_PAIRS:
        raise invalid(param, f"'{param}' has more than {MAX_HISTORY_PAIRS} pairs.", "too_long")
    limit = 4 * settings.CHATGLM["MAX_QUERY_CHARS"]
    pairs = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise invalid(f"{param}[{i}]", f"'{param}[{i}]' must be a pair of strings [query, response].", "invalid_type")
        if any(len(s) > limit for s in pair):
            raise invalid(f"{param}[{i}]", f"'{param}[{i}]' is longer than {limit} characters.", "too_long")
        pairs.append((pair[0], pair[1]))
    return pairs


def used_history(history: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The part of a client's history that can reach the model: its last CHATGLM_MAX_HISTORY
    pairs. Adapters pass only this to the turn, so older pairs are never stored either."""
    keep = max(0, settings.CHATGLM["MAX_HISTORY"])
    return history[max(0, len(history) - keep) :] if keep else []


def conversation_id(value: Any, param: str = "conversation_id") -> uuid.UUID | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(param, f"'{param}' must be a string.", "invalid_type")
    try:
        return uuid.UUID(value)
    except ValueError:
        # Malformed and unknown ids look the same to the caller.
        raise not_found(param=param) from None


def message_id(value: Any, param: str = "message_id") -> int | None:
    """A message's id in a conversation's tree (null allowed: the root)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(param, f"'{param}' must be a message id (a positive integer) or null.", "invalid_type")
    return value
