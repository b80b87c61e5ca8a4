"""Input hygiene at the boundary: every request body, WebSocket frame and query string passes here.

`decode_json()` turns raw bytes (or a frame's text) into a JSON object, or raises ChatError
400/413 naming what is wrong, before any field is read:

- size: at most `max_chars` (the HTTP body's own byte limit is Django's
  DATA_UPLOAD_MAX_MEMORY_SIZE, checked before the body is read);
- UTF-8 only, no `NaN`/`Infinity` (not JSON);
- nesting at most MAX_DEPTH arrays/objects deep, measured by a scan that does not recurse,
  *before* the standard parser (which recurses per level and dies of RecursionError);
- every string, key or value, is valid Unicode text a database can store: no lone surrogate
  (`"\\ud800"` is valid JSON but not encodable as UTF-8: SQLite, PostgreSQL and the response
  encoder all fail on it) and no NUL (PostgreSQL refuses it in text; SQLite would store it).
  Both are refused, naming the field (`history[3][0]`, `messages[2].content`), rather than
  repaired, so that what is stored is what the client sent. Other control characters are
  text a user may paste (tabs, ANSI colours) and every database stores them; the short
  one-line fields (titles) refuse them in `chat.params`.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from .errors import ChatError, invalid

MAX_DEPTH = 32  # the deepest legitimate body is 4 (messages[].content[].text)
MAX_PATH_CHARS = 80

# A JSON string literal (escapes included), to skip brackets inside strings while scanning.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # the unrolled loop: linear and fast
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# What no stored text may contain: a lone surrogate (unencodable) or NUL (PostgreSQL refuses it).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _bad_json(message: str) -> ChatError:
    return ChatError(message, code="invalid_json")


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in `text` (JSON or not), without recursion."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    opening = brackets.count("[") + brackets.count("{")
    if opening <= 1:
        return opening
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def decode_json(raw: bytes | str, *, max_chars: int | None = None, what: str = "body") -> dict:
    """The JSON object in `raw`, checked as the module doc says, or ChatError."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad_json(f"The {what} is not valid UTF-8 (byte {exc.start}).") from None
    else:
        text = raw
    if max_chars is not None and len(text) > max_chars:
        raise ChatError(f"The {what} is longer than {max_chars} characters.", status=413, code="too_large")
    if nesting_depth(text) > MAX_DEPTH:
        raise _bad_json(f"The {what} nests arrays or objects more than {MAX_DEPTH} deep.")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError, too many digits in an integer, NaN
        raise _bad_json(f"Malformed JSON: {exc}") from None
    except RecursionError:  # the scan above should make this unreachable; never a 500
        raise _bad_json(f"The {what} nests arrays or objects too deeply.") from None
    if not isinstance(data, dict):
        raise _bad_json(f"The JSON {what} must be an object.")
    check_storable(data)
    return data


def check_storable(data: Any, path: str = "") -> None:
    """Raise ChatError naming the first string (key or value) in `data` that holds a lone
    surrogate or a NUL. Iterative: `data` may be as deep as MAX_DEPTH allows."""
    stack = [(path, data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            _check_text(where, value)
        elif isinstance(value, dict):
            for key, item in value.items():
                inner = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and _UNSTORABLE.search(key):
                    _check_text(f"{where}.{safe(key)}" if where else safe(key), key, is_key=True)
                stack.append((inner, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))


def _check_text(where: str, value: str, *, is_key: bool = False) -> None:
    found = _UNSTORABLE.search(value)
    if found is None:
        return
    where = safe(where) or "body"
    thing = f"The key '{where}'" if is_key else f"'{where}'"
    if found.group() == "\x00":
        raise invalid(where, f"{thing} contains a NUL character (\\u0000), which cannot be stored.",
                      "invalid_character")
    raise invalid(where, f"{thing} contains a lone surrogate ({ascii(found.group())[1:-1]}): "
                         "not valid Unicode text.", "invalid_unicode")


def safe(text: str) -> str:
    """`text` fit to quote back in an error message: unstorable and control characters as
    \\u escapes, at most MAX_PATH_CHARS characters."""
    text = _CONTROL.sub(lambda m: ascii(m.group())[1:-1], _UNSTORABLE.sub(lambda m: ascii(m.group())[1:-1], text))
    return text if len(text) <= MAX_PATH_CHARS else text[: MAX_PATH_CHARS - 1] + "…"


def query_text(value: str | None, name: str, max_chars: int) -> str:
    """A text parameter of a URL's query string (`?q=`), checked like a JSON string."""
    value = (value or "").strip()
    if len(value) > max_chars:
        raise invalid(name, f"'{name}' is longer than {max_chars} characters.", "too_long")
    _check_text(name, value)
    return value


def has_control(text: str, *, lines: bool = True) -> bool:
    """Whether `text` has control characters (tab, CR and LF count only when `lines` is False)."""
    return _CONTROL.search(text) is not None or (not lines and any(c in text for c in "\t\n\r"))
