"""Loading ChatGLM checkpoints: config, family, tokenizer and weights. No checkpoint code runs.

Weights come from sharded or single-file `.safetensors` or `pytorch_model*.bin` (read with
`torch.load(weights_only=True, mmap=True)`), one shard at a time, straight into a model
built on the meta device. Each tensor is cast and moved as it arrives, and, when asked,
each Linear layer of the transformer blocks is quantized as soon as its weight is there,
so peak memory stays near the final model plus one shard (a float32 copy of a 6B model is
never built just to be quantized).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..quantize import QuantizedLinear
from .chatglm import MODELS, ChatGLMBase, ChatGLMConfig
from .chatglm_tokenizer import ChatGLMTokenizer, load_tokenizer

# The checkpoints carry rotary frequency buffers that the reference never uses (README 1).
IGNORED_KEYS = re.compile(r".*\.inv_freq$")
# Linear layers inside the blocks: what the reference's own `quantize()` converts. Embeddings
# and the output layer stay in float, as there.
QUANTIZABLE = re.compile(
    r".*\.layers\.\d+\.(attention|self_attention|mlp)\.(query_key_value|dense|dense_h_to_4h|dense_4h_to_h)$"
)


def read_config(checkpoint_dir: Path) -> dict:
    path = checkpoint_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {checkpoint_dir}")
    return json.loads(path.read_text(encoding="utf-8"))


def detect_family(checkpoint_dir: Path, raw: dict) -> str:
    """"v1", "v2" or "v3", from the config and tokenizer files.

    * v1 has `position_encoding_2d` / `inner_hidden_size`; v2 and v3 have
      `multi_query_group_num` / `padded_vocab_size` (the same network).
    * v3 differs from v2 only in code-added role tokens; the real tokenizer.model files have
      the same piece count (64789), so the vocab size cannot tell them apart. v3 is chosen
      when tokenizer_config.json declares `<|user|>` (newer revisions list their added
      tokens), or when the checkpoint names itself chatglm3 (`name_or_path` in
      tokenizer_config.json, `_name_or_path` in config.json, or the directory name).
    """
    if "position_encoding_2d" in raw or "inner_hidden_size" in raw:
        return "v1"
    if "multi_query_group_num" not in raw and "padded_vocab_size" not in raw:
        raise ValueError(f"{checkpoint_dir} is not a ChatGLM checkpoint this backend knows (v1, v2, v3)")
    tokenizer_config = checkpoint_dir / "tokenizer_config.json"
    tokenizer_raw = json.loads(tokenizer_config.read_text(encoding="utf-8")) if tokenizer_config.is_file() else {}
    if "<|user|>" in json.dumps(tokenizer_raw):
        return "v3"
    names = (tokenizer_raw.get("name_or_path", ""), raw.get("_name_or_path", ""), checkpoint_dir.name)
    return "v3" if any("chatglm3" in name.lower() for name in names) else "v2"


def weight_files(checkpoint_dir: Path) -> list[Path]:
    """Shards listed by the index (safetensors first), else the single weights file."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = checkpoint_dir / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [checkpoint_dir / name for name in sorted(set(weight_map.values()))]
        if (checkpoint_dir / single).is_file():
            return [checkpoint_dir / single]
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin (or their index) in {checkpoint_dir}")


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of one weights file, without executing anything from it."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        yield from state.items()


def load_weights(
    model: ChatGLMBase, files: list[Path], device: torch.device, dtype: torch.dtype, quantize: int
) -> None:
    """Fill a meta-device model from weight files, quantizing block Linears as they arrive."""
    tied = model.config.family == "v1"  # lm_head is the word-embedding matrix
    expected = {name for name, _ in model.named_parameters()}
    if tied:
        expected.discard("lm_head.weight")
    for path in files:
        for name, tensor in iter_tensors(path):
            if IGNORED_KEYS.match(name) or (tied and name == "lm_head.weight"):
                continue
            if name not in expected:
                raise ValueError(f"unexpected weight {name!r} in {path.name}: not a {model.config.family} checkpoint?")
            expected.discard(name)
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            module._parameters[attr] = nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=False)
            if quantize in (8, 4) and attr == "weight" and QUANTIZABLE.match(module_name):
                _quantize_in_place(model, module_name, module, quantize)
    if expected:
        raise ValueError(f"weights missing from the checkpoint: {', '.join(sorted(expected)[:8])}")
    if tied:
        model.tie_weights()


def _quantize_in_place(model: nn.Module, name: str, linear: nn.Module, bits: int) -> None:
    assert isinstance(linear, nn.Linear)
    if QuantizedLinear.supports(linear, bits):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, QuantizedLinear(linear, bits))


def load_model(
    checkpoint_dir: str | Path, device: str | torch.device = "cpu", quantize: int = 16
) -> tuple[ChatGLMBase, ChatGLMTokenizer]:
    """The model (eval mode, float32 on CPU, float16 on GPU) and its tokenizer."""
    checkpoint_dir = Path(checkpoint_dir)
    raw = read_config(checkpoint_dir)
    family = detect_family(checkpoint_dir, raw)
    config = ChatGLMConfig.from_dict(raw, family)
    device = torch.device(device)
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    with torch.device("meta"):
        model = MODELS[family](config)
    load_weights(model, weight_files(checkpoint_dir), device, dtype, quantize)
    return model.eval(), load_tokenizer(checkpoint_dir, family)
