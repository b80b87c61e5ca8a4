"""A tiny ChatGLM3 checkpoint whose weights answer with a chosen tool call, for end-to-end tests
of the real `chatglm` backend (tokens -> ChatGLM3's call syntax -> OpenAI `tool_calls`).

Built from the tiny fixture's config and tokenizer:

* the tokenizer gets a few pieces appended (its ids after the fixture's pieces, the specials
  after them), so that the answer is a chain of distinct pieces: `get`, `_weather\\n`,
  ```` ```python\\n ````, `tool_call(`, `city=`, `"Paris"`, `)\\n`, ```` ``` ````. (The fixture
  spells a fence as three equal byte pieces, which no next-token rule of the last token alone
  can count.) The follow-up answer, after a tool result, is one piece.
* the weights: each used id's embedding is one axis of the hidden state; layer 0's attention
  has one head that looks for `<|observation|>` anywhere before (a key on that id only, in the
  dims rotary leaves alone) and writes a flag when there is one; layer 0's MLP maps the last
  token (and, after `<|assistant|>`, the flag) to the next piece's axis; every other output
  projection is zero, so the residual passes through; the output layer reads the axes. Greedy
  decoding from `<|assistant|>` therefore writes the call, then EOS; with a tool result in the
  prompt it writes `ANSWER` instead.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tests.engine.chatglm_fixtures import checkpoint

CALL_PIECES = ["get", "_weather\n", "```python\n", "tool_call(", "city=", '"Paris"', ")\n", "```"]
CALL_NAME, CALL_ARGUMENTS = "get_weather", {"city": "Paris"}
ANSWER = "It is sunny in Paris."


def _piece_record(piece: str) -> bytes:
    """One `SentencePiece` message of sentencepiece's ModelProto (field 1 of the model): piece
    (1, string), score (2, float), type (3, NORMAL = 1), as protobuf's wire format writes them."""
    text = piece.encode()
    body = b"\x0a" + _varint(len(text)) + text + b"\x15" + struct.pack("<f", 0.0) + b"\x18\x01"
    return b"\x0a" + _varint(len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def build(directory: Path) -> Path:
    """Write the checkpoint (config, tokenizer, model.safetensors) into `directory`."""
    from chat.engine.networks.chatglm_tokenizer import V3Tokenizer

    source = checkpoint("v3")
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer_config.json"):
        shutil.copy(source / name, directory / name)
    # Repeated fields of a protobuf message may come in any number of records: appended ones
    # are the last pieces.
    model = (source / "tokenizer.model").read_bytes()
    (directory / "tokenizer.model").write_bytes(model + b"".join(map(_piece_record, CALL_PIECES + [ANSWER])))
    tokenizer = V3Tokenizer(directory / "tokenizer.model")

    call = [tokenizer.sp.piece_to_id(piece) for piece in CALL_PIECES]
    answer = tokenizer.sp.piece_to_id(ANSWER)
    assistant, observation = tokenizer.role_id("assistant"), tokenizer.role_id("observation")
    eos = tokenizer.eos_id
    axes = {token: axis for axis, token in enumerate([assistant, observation, eos, answer, *call])}
    flag = len(axes)  # the residual axis where the observation head writes

    config = json.loads((source / "config.json").read_text())
    heads, head_dim, groups = config["num_attention_heads"], config["kv_channels"], config["multi_query_group_num"]
    ffn = config["ffn_hidden_size"]
    # Every learned weight from zero (the rotary frequencies are not learned: kept).
    weights = {name: tensor.float() if name.endswith("inv_freq") else torch.zeros_like(tensor, dtype=torch.float32)
               for name, tensor in _fixture_weights(source).items()}
    scale = 8.0  # an axis at 8: RMS 1 over 64 dims, so the norms leave it as it is

    embedding = weights["transformer.embedding.word_embeddings.weight"]
    output = weights["transformer.output_layer.weight"]
    for token, axis in axes.items():
        embedding[token, axis] = scale
        output[token, axis] = 1.0
    for name in weights:
        if name.endswith("layernorm.weight"):
            weights[name].fill_(1.0)

    # Layer 0, head 0 (group 0): query a constant, key the observation axis, in a dim past the
    # rotary half of the head; value: the observation axis, to the flag axis.
    prefix = "transformer.encoder.layers.0."
    qkv_w, qkv_b = weights[prefix + "self_attention.query_key_value.weight"], weights[prefix + "self_attention.query_key_value.bias"]
    plain = head_dim // 2  # the first dim rotary leaves alone
    key_row, value_row = heads * head_dim + plain, (heads + groups) * head_dim
    qkv_b[plain] = 1.0
    qkv_w[key_row, axes[observation]] = 40.0 / scale * head_dim ** 0.5  # score 40 where it is: all the weight
    qkv_w[value_row, axes[observation]] = 1.0
    weights[prefix + "self_attention.dense.weight"][flag, 0] = 1.0

    # Layer 0's MLP: unit j (gate j, up ffn + j) fires on the last token's axis; its output goes
    # to the next token's axis. After <|assistant|>, a second unit (up: the flag) turns the call's
    # first piece into the answer.
    gate_up, down = weights[prefix + "mlp.dense_h_to_4h.weight"], weights[prefix + "mlp.dense_4h_to_h.weight"]
    chain = [(assistant, call[0])] + list(zip(call, call[1:])) + [(call[-1], eos), (answer, eos)]
    assert len(chain) + 1 <= ffn and len(set(dict(chain))) == len(chain)
    for unit, (last, following) in enumerate(chain):
        gate_up[unit, axes[last]] = gate_up[ffn + unit, axes[last]] = 1.0
        down[axes[following], unit] = 1.0
    unit = len(chain)
    gate_up[unit, axes[assistant]] = gate_up[ffn + unit, flag] = 1.0
    down[axes[answer], unit], down[axes[call[0]], unit] = 2.0, -1.0

    save_file({name: tensor.to(torch.float16).contiguous() for name, tensor in weights.items()},
              str(directory / "model.safetensors"))
    return directory


def _fixture_weights(source: Path) -> dict[str, torch.Tensor]:
    index = json.loads((source / "model.safetensors.index.json").read_text())
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(source / shard)))
    return out
