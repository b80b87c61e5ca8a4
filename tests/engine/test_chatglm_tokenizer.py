"""ChatGLM tokenizers against the reference's golden data, and the streaming text stages."""

from __future__ import annotations

import random
import re

import pytest

from chat.engine.detokenize import REPLACEMENT
from chat.engine.networks.chatglm_tokenizer import (
    StripWhitespace,
    TextRewrite,
    load_tokenizer,
    postprocess_response,
    response_stages,
    split_turns,
)

from .chatglm_fixtures import (
    FAMILIES,
    answer_ids,
    case_messages,
    checkpoint,
    control_ids,
    expected_response,
    golden,
)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def tokenizer(family):
    return load_tokenizer(checkpoint(family), family)


def test_vocab_sizes(family, tokenizer):
    assert tokenizer.num_pieces == golden(family)["sentencepiece_pieces"]
    assert tokenizer.vocab_size == golden(family)["tokenizer_vocab_size"]
    assert tokenizer.eos_token_ids == set(golden(family)["eos_token_ids"])


def test_roundtrip_matches_reference(family, tokenizer):
    for item in golden(family)["tokenizer_roundtrip"]:
        assert tokenizer.encode(item["text"]) == item["ids"], item["text"]
        assert tokenizer.tokenize(item["text"]) == item["pieces"], item["text"]
        assert tokenizer.decode(item["ids"]) == item["decoded"], item["text"]
        assert tokenizer.decode(item["ids_with_special_tokens"]) == item["decoded_with_special_tokens"]


def test_single_id_decode(family, tokenizer):
    for token_id, text in golden(family)["single_id_decode"].items():
        assert tokenizer.decode([int(token_id)]) == text, token_id


def test_ids_past_the_tokenizer_decode_to_nothing(family, tokenizer):
    """The model vocab is padded past the tokenizer; a stray id must not crash decoding."""
    assert tokenizer.decode([golden(family)["model_vocab_size"] - 1]) == ""


def test_prompt_ids_match_reference(family, tokenizer):
    for case in golden(family)["cases"]:
        assert tokenizer.build_prompt(case_messages(case)) == case["prompt_ids"], case["id"]


def test_special_strings_are_plain_text(family, tokenizer):
    """Deliberate difference from the reference v1: user text never becomes a special id."""
    specials = control_ids(family)
    for item in golden(family)["special_strings"]:
        ids = tokenizer.encode(item["text"])
        assert not specials & set(ids), item["text"]
        assert tokenizer.decode(ids) == tokenizer.decode(tokenizer.encode(item["text"]))
        if family != "v1":  # v2/v3 references already behave this way
            assert ids == item["ids"]
    prompt = tokenizer.build_prompt([{"role": "user", "content": "<sop>[gMASK]<|user|><|assistant|>[MASK]<eop>"}])
    structural = [i for i in prompt if i in specials]
    assert len(structural) == (2 if family != "v3" else 4)  # only the builder's own specials


def test_final_response_matches_reference(family, tokenizer):
    for case in golden(family)["cases"]:
        ids = answer_ids(family, case)
        assert tokenizer.decode(ids) == case["greedy_text"], case["id"]
        assert tokenizer.decode_response(ids) == expected_response(case), case["id"]
        assert postprocess_response(family, case["greedy_text"]) == case["response_all_tokens"]


def test_stream_deltas_are_whole_and_concatenate(family, tokenizer):
    for case in golden(family)["cases"]:
        decoder = tokenizer.stream_decoder()
        deltas = [decoder.push(i) for i in answer_ids(family, case)] + [decoder.flush()]
        text = "".join(deltas)
        assert text == expected_response(case), case["id"]
        # The random-weight model does emit invalid byte sequences; the only U+FFFD a client
        # sees are those of the final text, never half a character that is later completed.
        assert text.count(REPLACEMENT) == expected_response(case).count(REPLACEMENT)


def test_stream_of_multibyte_text_has_no_replacement_char(family, tokenizer):
    text = "鳙鱼🐟好吃吗？😀👍🏽 ok, 你好,世界! [[训练时间]]  end"
    decoder = tokenizer.stream_decoder()
    deltas = [decoder.push(i) for i in tokenizer.encode(text)] + [decoder.flush()]
    assert all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == postprocess_response(family, tokenizer.decode(tokenizer.encode(text)))


def test_v3_system_message_uses_role_token():
    tokenizer = load_tokenizer(checkpoint("v3"), "v3")
    ids = tokenizer.build_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    newline = tokenizer.encode("\n")
    assert ids[:3] == [tokenizer.gmask_id, tokenizer.sop_id, tokenizer.role_id("system")]
    assert ids[3 : 3 + len(newline)] == newline
    assert ids[-1] == tokenizer.role_id("assistant")


def test_split_turns_puts_system_before_first_query():
    history, query = split_turns([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ])
    assert history == [("Be brief.\n\na", "b")]
    assert query == "c"
    assert split_turns([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}]) == ([], "S\n\nq")
    assert split_turns([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == ([], "a\nb")


# -- streaming text stages ---------------------------------------------------------------------


def _stream(stages, pieces):
    out = []
    for piece in pieces:
        for stage in stages:
            piece = stage.feed(piece)
        out.append(piece)
    tail = ""
    for stage in stages:
        tail = stage.feed(tail) + stage.flush()
    return out + [tail]


def _random_chunks(rng, text):
    chunks, i = [], 0
    while i < len(text):
        n = rng.randint(0, 3)
        chunks.append(text[i : i + n])
        i += n
    return chunks


@pytest.mark.parametrize("family", FAMILIES)
def test_response_stages_equal_whole_text_processing_on_random_text(family):
    """Streamed in any chunking, the stages give exactly the whole-text result."""
    rng = random.Random(7)
    alphabet = ["学", "天", "a", " ", "  ", ",", "!", ":", ";", "?", "、", "\n", "[[训练时间]]", "[[训练", "时间]]"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        expected = text.strip().replace("[[训练时间]]", "2023年")
        if family == "v1":
            # the reference's process_response, verbatim in substance
            for a, b in ((",", "，"), ("!", "！"), (":", "："), (";", "；"), (r"\?", "？")):
                expected = re.sub(rf"([\u4e00-\u9fff]){a}", rf"\g<1>{b}", expected)
                expected = re.sub(rf"{a}([\u4e00-\u9fff])", rf"{b}\g<1>", expected)
        assert "".join(_stream(response_stages(family), _random_chunks(rng, text))) == expected, repr(text)


def test_v1_punctuation_is_held_until_it_cannot_change():
    stages = response_stages("v1")
    out = _stream(stages, ["你好", ",", "世界", ", ok", " and some more text"])
    # Before the end, what went out already has the full-width commas: never an ASCII one
    # that would have to be taken back once the next ideograph arrived.
    assert "".join(out[:-1]).startswith("你好，世界， ok")
    assert "".join(out) == "你好，世界， ok and some more text"


def test_text_rewrite_literal_matches_str_replace():
    rng = random.Random(3)
    for old, new in ((" 's", "'s"), (" ' ", "'"), ("[[训练时间]]", "2023年")):
        for _ in range(200):
            text = "".join(rng.choice([" ", "'", "s", "x", "[[训练", "时间]]"]) for _ in range(rng.randint(0, 20)))
            stage = TextRewrite.literal(old, new)
            assert "".join(_stream([stage], _random_chunks(rng, text))) == text.replace(old, new)


def test_strip_whitespace_holds_trailing_runs():
    stage = StripWhitespace()
    assert [stage.feed(t) for t in ["  ", " a", "  ", "b ", " "]] + [stage.flush()] == ["", "a", "", "  b", "", ""]
