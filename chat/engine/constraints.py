"""Constrained decoding: what a generation's output must match (OpenAI's `response_format`).

A `Constraint` is protocol-neutral: the adapters build it from `response_format` /
`text.format`, every backend enforces it its own way (a logits mask on the torch path,
llama.cpp's grammar sampler, the upstream server's own `response_format`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import llguidance

from .vocabulary import EngineError

# OpenAI's {"type": "json_object"}: any JSON object.
JSON_OBJECT_SCHEMA = '{"type":"object"}'


# Compact JSON, no whitespace between items: with free whitespace a model can pick whitespace
# forever (the tiny ChatGLM checkpoints did, and never closed the object); with ", " / ": "
# separators llguidance's mask let a digit through where the space was forced, on the native
# ChatGLM tokenizer (a mask the matcher then refused).
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


class UnsupportedConstraint(EngineError):
    """This backend cannot enforce this constraint (a schema its grammar engine cannot compile,
    a grammar kind it does not know): the request is refused (HTTP 400), never run unconstrained."""

    code = "unsupported_constraint"


@dataclasses.dataclass(frozen=True)
class Constraint:
    """Exactly one of the fields is set.

    json_schema: the JSON text of a JSON Schema the output must validate against.
    lark: an llguidance Lark grammar (torch backends), for formats JSON cannot describe.
    """

    json_schema: str | None = None
    lark: str | None = None

    def __post_init__(self):
        if (self.json_schema is None) == (self.lark is None):
            raise ValueError("a Constraint has exactly one of json_schema and lark")

    @classmethod
    def json_object(cls) -> Constraint:
        return cls(json_schema=JSON_OBJECT_SCHEMA)

    @classmethod
    def of_schema(cls, schema: dict[str, Any]) -> Constraint:
        return cls(json_schema=json.dumps(schema, separators=(",", ":"), ensure_ascii=False))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON for storage next to an answer (the schema as an object, not as text)."""
        if self.json_schema is not None:
            return {"json_schema": json.loads(self.json_schema)}
        return {"lark": self.lark}


def grammar_of(constraint: Constraint) -> str:
    """llguidance's grammar text for a constraint, checked (UnsupportedConstraint if not valid)."""
    try:
        if constraint.json_schema is not None:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(constraint.json_schema, overrides=JSON_OPTIONS)
        else:
            grammar = llguidance.LLMatcher.grammar_from_lark(constraint.lark)
    except ValueError as exc:
        raise UnsupportedConstraint(f"The grammar engine cannot use this schema: {exc}") from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        kind = "schema" if constraint.json_schema is not None else "grammar"
        raise UnsupportedConstraint(f"The grammar engine cannot compile this {kind}: {messages[0]}")
    return grammar
