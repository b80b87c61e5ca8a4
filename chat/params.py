"""Validation of request fields shared by every protocol: strings, history, generation parameters."""

from __future__ import annotations

import math
import uuid
from typing import Any

from django.conf import settings

from .engine import GenerationParams
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
    return GenerationParams(stop=stop_sequences(data.get(stop), where + stop), **values)


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
