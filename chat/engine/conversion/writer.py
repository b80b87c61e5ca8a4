"""Write one GGUF file from a checkpoint, streaming: one tensor in memory at a time.

The GGUF header lists every tensor's name, shape and type before any data, so the writer reads
the checkpoint twice: first names and shapes only (safetensors headers; `.bin` shards through
mmap, which touches no tensor data), then the data, tensor by tensor, in the same order.

Output types (`outtype`), as llama.cpp's converter/quantizer assign them:

* 1-D tensors (norm gains, biases) are always F32;
* "f32" / "f16": every matrix in that type;
* "q8_0": every matrix in Q8_0;
* "q4_0": the block matrices in Q4_0, the embedding and output matrices in Q8_0 (they are the
  most sensitive to quantization; llama.cpp's own Q4_0 recipe keeps the output matrix wider too);
* a matrix whose rows are not a whole number of 32-value blocks stays F16.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np

from ..config import ConfigError
from . import vocab
from .source import Checkpoint, iter_arrays, iter_specs
from .templates import TEMPLATES

log = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType
OUTTYPES = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
SKIPPED = (".inv_freq",)  # rotary buffers: llama.cpp computes the frequencies itself


def gguf_name(checkpoint: Checkpoint, name_map: gguf.TensorNameMap, name: str) -> str | None:
    if name.endswith(SKIPPED):
        return None
    mapped = name_map.get_name(name.removeprefix("transformer."), try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise ConfigError(f"{checkpoint.path.name}: tensor {name!r} has no place in llama.cpp's {checkpoint.arch} layout")
    return mapped


def tensor_type(gguf_name: str, shape: tuple[int, ...], outtype: str) -> gguf.GGMLQuantizationType:
    if len(shape) < 2:
        return Q.F32
    qtype = OUTTYPES[outtype]
    if outtype == "q4_0" and gguf_name in ("token_embd.weight", "output.weight"):
        qtype = Q.Q8_0
    if qtype in (Q.Q8_0, Q.Q4_0) and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = Q.F16
    return qtype


QUANT_ROWS = 1024  # rows quantized at a time: numpy's temporaries stay a few MB per chunk


def encode(array: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == Q.F32:
        return array.astype(np.float32, copy=False)
    if qtype == Q.F16:
        return array.astype(np.float16, copy=False)
    rows = array.reshape(-1, array.shape[-1])
    out = np.empty(gguf.quant_shape_to_byte_shape(rows.shape, qtype), dtype=np.uint8)
    for start in range(0, rows.shape[0], QUANT_ROWS):
        chunk = rows[start : start + QUANT_ROWS].astype(np.float32)
        out[start : start + QUANT_ROWS] = gguf.quants.quantize(chunk, qtype)
    return out.reshape(gguf.quant_shape_to_byte_shape(array.shape, qtype))


def add_metadata(writer: gguf.GGUFWriter, checkpoint: Checkpoint, outtype: str) -> None:
    c = checkpoint.config
    writer.add_name(checkpoint.path.name)
    writer.add_file_type(FILE_TYPES[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(checkpoint.block_count)
    if checkpoint.kind in ("chatglm2", "chatglm3"):
        n_head = c["num_attention_heads"]
        head_dim = c.get("kv_channels") or c["hidden_size"] // n_head
        if n_head * head_dim != c["hidden_size"]:  # llama.cpp splits the fused QKV at n_embd
            raise ConfigError(f"{checkpoint.path.name}: heads × kv_channels ≠ hidden_size, which llama.cpp's chatglm graph cannot split")
        writer.add_context_length(c.get("seq_length", 2048))
        writer.add_embedding_length(c["hidden_size"])
        writer.add_feed_forward_length(c["ffn_hidden_size"])
        writer.add_head_count(n_head)
        writer.add_head_count_kv(c.get("multi_query_group_num", n_head) if c.get("multi_query_attention") else n_head)
        writer.add_layer_norm_rms_eps(c.get("layernorm_epsilon", 1e-5))
        # Rotary on the first half of each head, adjacent pairs: llama.cpp's "normal" RoPE over
        # n_rot = head_dim / 2, the layout the checkpoint already has (no weight permutation).
        writer.add_rope_dimension_count(head_dim // 2)
        writer.add_rope_freq_base(10000.0 * c.get("rope_ratio", 1))
        vocab.add_chatglm_vocab(writer, checkpoint)
        writer.add_chat_template(TEMPLATES[checkpoint.kind])
    else:  # glm / glm4 (transformers' GlmConfig / Glm4Config names)
        n_head = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // n_head
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        writer.add_context_length(c.get("max_position_embeddings", 8192))
        writer.add_embedding_length(c["hidden_size"])
        writer.add_feed_forward_length(c["intermediate_size"])
        writer.add_head_count(n_head)
        writer.add_head_count_kv(c.get("num_key_value_heads", n_head))
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_layer_norm_rms_eps(c.get("rms_norm_eps", 1e-5))
        partial = rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 0.5))
        writer.add_rope_dimension_count(int(head_dim * partial))
        writer.add_rope_freq_base(float(rope.get("rope_theta", c.get("rope_theta", 10000.0))))
        vocab.add_bpe_vocab(writer, checkpoint)  # includes the checkpoint's own chat template


def write_gguf(checkpoint: Checkpoint, out_path: Path, outtype: str) -> None:
    """Convert `checkpoint` into `out_path` (created or truncated)."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[checkpoint.arch.upper()], checkpoint.block_count)
    tied = checkpoint.config.get("tie_word_embeddings", False)
    writer = gguf.GGUFWriter(out_path, checkpoint.arch)
    add_metadata(writer, checkpoint, outtype)

    specs = [(spec, gguf_name(checkpoint, name_map, spec.name)) for spec in iter_specs(checkpoint)]
    # Tied embeddings (saved without lm_head): the output matrix is written as a copy of the embedding.
    copy_output = tied and not any(target == "output.weight" for _, target in specs)
    plan: list[tuple[str, gguf.GGMLQuantizationType]] = []  # (gguf name, type) in write order
    names = set()
    for spec, target in specs:
        if target is None:
            continue
        targets = [target, "output.weight"] if copy_output and target == "token_embd.weight" else [target]
        for target in targets:
            qtype = tensor_type(target, spec.shape, outtype)
            if qtype in (Q.F32, Q.F16):
                dtype = np.dtype(np.float32 if qtype == Q.F32 else np.float16)
                writer.add_tensor_info(target, spec.shape, dtype, int(np.prod(spec.shape)) * dtype.itemsize)
            else:  # stored as bytes: the writer takes the byte shape and the quantization type
                byte_shape = gguf.quant_shape_to_byte_shape(spec.shape, qtype)
                writer.add_tensor_info(target, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)
            plan.append((target, qtype))
            names.add(target)
    for required in ("token_embd.weight", "output_norm.weight", "output.weight"):
        if required not in names:
            raise ConfigError(f"{checkpoint.path.name}: no tensor for llama.cpp's {required}")

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    steps = iter(plan)
    for name, array in iter_arrays(checkpoint):
        if name.endswith(SKIPPED):
            continue
        copies = 2 if copy_output and gguf_name(checkpoint, name_map, name) == "token_embd.weight" else 1
        for _ in range(copies):
            target, qtype = next(steps)
            data = encode(array, qtype)
            writer.write_tensor_data(data)
            log.debug("wrote %s %s as %s", target, array.shape, qtype.name)
        del array
    writer.close()
