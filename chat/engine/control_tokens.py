"""Keep a chat's text from spelling the model's control tokens.

A tokenizer that parses special tokens anywhere in a prompt turns a user's `<|im_end|>` into
the real end-of-turn token: the text can then close its own turn and open a forged `system`
one. Only the chat template may place control tokens, so before the template is applied,
every spelled control token in a message is broken up with U+2060 WORD JOINER (invisible,
no meaning) after its first character: the model reads the same characters, as text. What
is stored and shown is the original text; only the prompt is changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

JOINER = "\u2060"


class ControlTokens:
    def __init__(self, tokens: Iterable[str]):
        # Longest first, so `<|im_start|>` wins over a shorter token it contains.
        spelled = sorted({t for t in tokens if t and len(t) > 1 and not t.isspace()}, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, spelled))) if spelled else None

    def defuse(self, text: str) -> str:
        if self.pattern is None:
            return text
        return self.pattern.sub(lambda m: m.group()[0] + JOINER + m.group()[1:], text)

    def defuse_messages(self, messages: list[dict]) -> list[dict]:
        return [{**m, "content": self.defuse(m["content"])} for m in messages]


def of_tokenizer(tokenizer) -> ControlTokens:
    """The control tokens of a Hugging Face tokenizer: its special tokens and added special ones."""
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            tokens.add(str(added.content))
    return ControlTokens(tokens)
