"""The incremental detokenizer on real tokenizers: whole characters only, exact concatenation."""

from pathlib import Path

import pytest
import sentencepiece

from chat.engine.detokenize import IncrementalDetokenizer

TEXTS = [
    "你好，世界！今天天气怎么样？",
    "Emoji: 🙂👍🏽 and a family 👨‍👩‍👧 in one line.",
    "Mixed 中文 and English, 数字 123 and 符号 ©®™.",
    "Rare CJK: 鳙鱼 𠀀𪚥, and accents: naïve café.",
    "def f(x):\n\treturn x  # 注释\n",
]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chatglm"


def stream(decode, ids):
    detok = IncrementalDetokenizer(decode)
    deltas = [detok.push(i) for i in ids]
    deltas.append(detok.flush())
    return [d for d in deltas if d]


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_bpe(smol_tokenizer, text):
    ids = smol_tokenizer.encode(text, add_special_tokens=False)
    decode = lambda ids: smol_tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    naive = [decode([i]) for i in ids]
    deltas = stream(decode, ids)
    assert "".join(deltas) == decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)
    if any(ord(c) > 0x7FF for c in text):
        # The test would prove nothing if no character were split across tokens.
        assert any("\ufffd" in piece for piece in naive)


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_byte_fallback(text):
    model = FIXTURES / "chatglm2-6b-tiny" / "tokenizer.model"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    ids = sp.encode(text)
    deltas = stream(sp.decode, ids)
    assert "".join(deltas) == sp.decode(ids)
    assert not any("\ufffd" in d for d in deltas)
    assert any(sp.id_to_piece(i).startswith("<0x") for i in ids)  # byte-fallback pieces are exercised


def test_incomplete_final_character_is_dropped_not_garbled():
    data = "ok🙂".encode()
    table = {i: bytes([b]) for i, b in enumerate(data)}
    decode = lambda ids: b"".join(table[i] for i in ids).decode("utf-8", errors="replace")  # noqa: E731
    deltas = stream(decode, list(range(len(data) - 1)))  # the emoji's last byte never comes
    assert "".join(deltas) == "ok"
