"""Where the ChatGLM golden fixtures live, and small helpers over them.

The tiny checkpoints and their golden outputs are vendored in `tests/fixtures/chatglm/` (its
README says how they were made); `CHATGLM_FIXTURES` may name another copy.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("v1", "v2", "v3")


def fixtures_dir() -> Path:
    configured = os.environ.get("CHATGLM_FIXTURES", "").strip()
    return Path(configured) if configured else REPO_ROOT / "tests" / "fixtures" / "chatglm"


def require_fixtures() -> Path:
    root = fixtures_dir()
    if not (root / "golden" / "v1.json").is_file():
        pytest.fail(f"ChatGLM fixtures not found at {root}")
    return root


@functools.cache
def golden(family: str) -> dict:
    return json.loads((require_fixtures() / "golden" / f"{family}.json").read_text(encoding="utf-8"))


def checkpoint(family: str) -> Path:
    return require_fixtures() / golden(family)["checkpoint_dir"]


def case_messages(case: dict) -> list[dict[str, str]]:
    """The chat messages that correspond to a golden case's `history` + `query`."""
    messages = []
    for user, assistant in case["history"]:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages + [{"role": "user", "content": case["query"]}]


def answer_ids(family: str, case: dict) -> list[int]:
    """The generated ids of a case without the final EOS id."""
    eos = set(golden(family)["eos_token_ids"])
    return [i for i in case["greedy_ids"] if i not in eos]


def expected_response(case: dict) -> str:
    """What the server's final text must be: golden `response_all_tokens`, with one rule of ours.

    `response_all_tokens` is the family's post-processing of *every* generated token; the
    reference `response` differs for v1 (its `stream_chat` never yields the last step, so a
    streaming client missed a token) and v3 (`chat()` always drops the last id before decoding,
    even on a length stop). A server shows every token it counted, so we match
    `response_all_tokens`, except that an incomplete character cut by the token limit (a
    trailing U+FFFD of the decoded text) is dropped: the engine never emits half a character.
    """
    if case["greedy_text"].endswith("\ufffd"):
        return case["response_all_tokens"].rstrip("\ufffd")
    return case["response_all_tokens"]


def control_ids(family: str) -> set[int]:
    """Ids of special/control tokens, without v1's whitespace pieces and byte pieces."""
    names = golden(family)["special_token_ids"]
    return {i for name, i in names.items() if not name.startswith(("<n>", "<|tab", "<|blank", "<0x"))}
