"""Tokenizer metadata for the GGUF file, in the layout llama.cpp's `chatglm`/`glm4` loaders expect.

ChatGLM2/3: a llama.cpp "llama" (sentencepiece) vocabulary built from `tokenizer.model`, then the
specials that the reference tokenizer adds in code, then `[PAD<id>]` rows up to the model's
padded vocabulary (`padded_vocab_size`), as llama.cpp's `set_vocab_chatglm3` lays it out.

One deliberate difference from that converter: the specials `sop` and `eop` are written as
`<sop>` and `<eop>`. llama.cpp cuts special-token texts out of the rendered prompt, so a bare
`sop` would turn the letters "sop" inside user words ("desktop") into the control token. Only the
text changes; ids are the reference's.

GLM-4 (glm, glm4): a "gpt2" (byte-level BPE) vocabulary from `tokenizer.json` through
transformers' fast tokenizer (no checkpoint code runs), with its merges.
"""

from __future__ import annotations

import json

import gguf
import sentencepiece as spm

from ..config import ConfigError
from ..networks.chatglm_tokenizer import V2Tokenizer, V3Tokenizer
from .source import Checkpoint

TokenType = gguf.TokenType
RENAMED = {"sop": "<sop>", "eop": "<eop>"}


def chatglm_specials(kind: str) -> tuple[str, ...]:
    names = V3Tokenizer.SPECIALS if kind == "chatglm3" else V2Tokenizer.SPECIALS
    return tuple(RENAMED.get(name, name) for name in names)


def add_chatglm_vocab(writer: gguf.GGUFWriter, checkpoint: Checkpoint) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(checkpoint.path / "tokenizer.model"))
    n_pieces = sp.get_piece_size()
    vocab_size = int(checkpoint.config.get("padded_vocab_size") or checkpoint.config["vocab_size"])
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for i in range(n_pieces):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
    specials = chatglm_specials(checkpoint.kind)
    for name in specials:
        tokens.append(name.encode("utf-8"))
        scores.append(0.0)
        types.append(TokenType.CONTROL)
    if len(tokens) > vocab_size:
        raise ConfigError(f"{checkpoint.path.name}: tokenizer has {len(tokens)} ids, more than the model's {vocab_size}")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode("utf-8"))
        scores.append(0.0)
        types.append(TokenType.UNUSED)

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("chatglm-spm")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_bos_token(False)  # the chat template writes [gMASK]<sop> itself
    writer.add_add_eos_token(False)
    special = {name: n_pieces + i for i, name in enumerate(specials)}
    writer.add_unk_token_id(sp.unk_id())
    writer.add_bos_token_id(sp.bos_id())
    # Generation ends on </s>; for v3 also on <|user|> and <|observation|> (the model handing the
    # turn back), which llama.cpp treats as end-of-generation as its EOT and EOM tokens.
    writer.add_eos_token_id(sp.eos_id())
    if checkpoint.kind == "chatglm3":
        writer.add_eot_token_id(special["<|user|>"])
        writer.add_eom_token_id(special["<|observation|>"])
    writer.add_pad_token_id(sp.unk_id())


# llama.cpp pre-tokenizer names, recognised by the tokenizer.json pre-tokenizer they implement.
# (llama.cpp's converter recognises them by hashing a sample tokenization; a structural check
# needs no table of hashes and refuses what it does not know.)
GLM4_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def bpe_pre_tokenizer(tokenizer_json: dict) -> str:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == GLM4_SPLIT:
        return "glm4"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # digits one by one, then GPT-2's regex (SmolLM2's tokenizer)
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own regex
    raise ConfigError(f"tokenizer.json pre-tokenizer {kinds} is not one this converter knows (GLM-4's, SmolLM2's, GPT-2's)")


def add_bpe_vocab(writer: gguf.GGUFWriter, checkpoint: Checkpoint) -> None:
    from transformers import AutoTokenizer

    path = checkpoint.path
    tokenizer_json_path = path / "tokenizer.json"
    if not tokenizer_json_path.is_file():
        raise ConfigError(f"{path.name} has no tokenizer.json")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    vocab_size = int(checkpoint.config.get("padded_vocab_size") or checkpoint.config["vocab_size"])
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ConfigError(f"{path.name}: tokenizer ids go up to {max(by_id)}, past the model's vocab_size {vocab_size}")
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(bpe_pre_tokenizer(json.loads(tokenizer_json_path.read_text(encoding="utf-8"))))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special_vocab = gguf.SpecialVocab(path, load_merges=True, n_vocab=vocab_size)
    ids = {token: i for i, token in by_id.items() if i in added}
    # As llama.cpp's GLM-4 converters: <|endoftext|> ends text, <|user|> ends the assistant's turn;
    # <|observation|> (a tool call) ends it too.
    for kind, name in (("eos", "<|endoftext|>"), ("eot", "<|user|>"), ("eom", "<|observation|>"), ("unk", "<|endoftext|>")):
        if name in ids:  # over what tokenizer_config.json says (a list in config.json is ignored)
            special_vocab.special_token_ids[kind] = ids[name]
    special_vocab.add_special_token["bos"] = False
    special_vocab.add_special_token["eos"] = False
    special_vocab.add_to_gguf(writer)
