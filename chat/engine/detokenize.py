"""Incremental, UTF-8-safe decoding of token ids into text deltas.

A token may carry only part of a character (byte-level BPE, sentencepiece byte fallback:
an emoji or a rare CJK character spans 2-4 tokens). Decoding token by token then yields
U+FFFD, the garbled characters of the original ChatGLM demo. Decoding the whole answer at
every step is quadratic and lets text already sent change under the client.

The technique of vLLM and text-generation-inference: decode a short window twice, once up
to `read_offset` (text already sent) and once to the end, and send the difference only when
it does not end in U+FFFD. The window starts at `prefix_offset`, a few tokens back, so that
tokenizers whose decoding depends on the preceding token (sentencepiece's leading space)
decode the new token in context.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[list[int]], str], context: Iterable[int] = ()):
        """`decode` maps ids to text (skipping special tokens); `context` are ids before the answer.

        Only the last few context ids are kept, so that the first answer token decodes as it
        would in the middle of the text (a leading space is kept, not stripped).
        """
        self._decode = decode
        self._ids: list[int] = list(context)[-5:]
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the new whole characters (possibly "")."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            delta = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """The answer ended: release held-back text, dropping an incomplete final character."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        if len(new_text) <= len(prefix_text):
            return ""
        return new_text[len(prefix_text) :].rstrip(REPLACEMENT)


# -- one token's bytes, for logprobs -------------------------------------------------------------

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (every byte-level tokenizer's): the character that
    stands for each byte in a vocabulary piece."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


BYTE_LEVEL = _byte_level_alphabet()


def piece_bytes(piece: str, byte_level: bool) -> bytes:
    """The exact bytes of a vocabulary piece: a sentencepiece byte-fallback piece (`<0xE4>`) is
    that byte, a byte-level BPE piece (`ä½`) spells its bytes, a sentencepiece piece has `▁` for
    a space. A token that holds part of a character has bytes that are not UTF-8 by themselves."""
    match = _BYTE_FALLBACK.fullmatch(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    if byte_level and all(c in BYTE_LEVEL for c in piece):
        return bytes(BYTE_LEVEL[c] for c in piece)
    return piece.replace("\u2581", " ").encode("utf-8")
