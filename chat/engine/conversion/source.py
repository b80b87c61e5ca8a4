"""What a checkpoint directory holds, for conversion: its kind, its config, and its tensors read lazily.

Kinds (each maps to a llama.cpp architecture):

* ``chatglm2`` / ``chatglm3`` -> ``chatglm`` (THUDM/chatglm2-6b, THUDM/chatglm3-6b: ``transformer.*``
  names, fused QKV, sentencepiece tokenizer with code-added specials);
* ``glm`` -> ``chatglm`` (``GlmForCausalLM``, glm-4-9b-chat-hf: separate q/k/v, ``tokenizer.json``),
  as llama.cpp's own converter does;
* ``glm4`` -> ``glm4`` (``Glm4ForCausalLM``, GLM-4-0414: ``glm`` plus two post-norms per layer).

ChatGLM-6B (v1) has no llama.cpp architecture (2-D positions, prefix-LM mask): refused.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError
from ..networks.loading import detect_family, weight_files

ARCHITECTURES = {"chatglm2": "chatglm", "chatglm3": "chatglm", "glm": "chatglm", "glm4": "glm4"}


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    path: Path
    kind: str  # a key of ARCHITECTURES
    config: dict
    files: tuple[Path, ...]  # weight files, in a fixed order

    @property
    def arch(self) -> str:
        return ARCHITECTURES[self.kind]

    @property
    def block_count(self) -> int:
        return int(self.config.get("num_layers") or self.config["num_hidden_layers"])


def inspect_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint's kind; ConfigError (one line) for anything this converter cannot serve."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{path} has no config.json: not a checkpoint directory")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    model_type = config.get("model_type", "")
    if model_type == "chatglm":
        try:
            family = detect_family(path, config)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if family == "v1":
            raise ConfigError(
                f"{path.name} is ChatGLM-6B (v1), which llama.cpp has no architecture for; "
                "serve it with the native backend (--backend chatglm)"
            )
        kind = "chatglm2" if family == "v2" else "chatglm3"
        _require_sentencepiece(path)
    elif model_type in ("glm", "glm4"):
        kind = model_type
    else:
        raise ConfigError(
            f"{path.name}: model_type {model_type!r} cannot be converted for llama.cpp "
            "(supported: chatglm (ChatGLM2/3), glm, glm4)"
        )
    try:
        files = tuple(weight_files(path))
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    return Checkpoint(path, kind, config, files)


def _require_sentencepiece(path: Path) -> None:
    """glm-4-9b-chat (remote-code layout) also says model_type "chatglm", but its tokenizer.model
    is a tiktoken rank file: refuse it here, not halfway through a conversion."""
    import sentencepiece as spm

    try:
        spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    except (OSError, RuntimeError):
        raise ConfigError(
            f"{path.name}: tokenizer.model is not a sentencepiece model (glm-4-9b-chat's remote-code layout?); "
            "convert the transformers-format checkpoint (glm-4-9b-chat-hf) instead"
        ) from None


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]


def _open_bin(path: Path) -> dict[str, torch.Tensor]:
    # mmap: tensors are views of the file; pages are read only when a tensor's data is touched.
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def iter_specs(checkpoint: Checkpoint) -> Iterator[TensorSpec]:
    """Names and shapes of every stored tensor, without reading tensor data."""
    for path in checkpoint.files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    yield TensorSpec(name, tuple(handle.get_slice(name).get_shape()))
        else:
            for name, tensor in _open_bin(path).items():
                yield TensorSpec(name, tuple(tensor.shape))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    # float16/float32 stay as stored (no float32 copy of a float16 matrix); numpy has no bfloat16
    if tensor.dtype not in (torch.float16, torch.float32):
        tensor = tensor.float()
    return tensor.numpy()


def iter_arrays(checkpoint: Checkpoint) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float16/float32 array) for every stored tensor, one at a time, in `iter_specs` order."""
    for path in checkpoint.files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    yield name, _numpy(handle.get_tensor(name))
        else:
            state = _open_bin(path)
            for name in list(state):
                yield name, _numpy(state.pop(name))
