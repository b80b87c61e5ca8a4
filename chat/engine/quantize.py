"""Weight-only int8 / int4 quantization of Linear layers (the seed's `--quantize 8|4`).

* int8: symmetric, one scale per output channel.
* int4: symmetric, one scale per group of `group_size` input columns (default 32).

Why not torchao: torchao 0.18 imports on torch 2.13 CPU, but its int8 weight-only path ran
a 1024x1024 matrix-vector product about 25x *slower* than float32 here, and its int4 CPU
path needs an extra native package (`mslk`). PyTorch itself ships the CPU kernels torchao
would call (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`); they are fast with
bfloat16 activations, so on CPU the activations are cast to bfloat16 for the matmul and the
result back. On other devices the weight is dequantized on the fly in plain PyTorch.
Scales are stored rounded to bfloat16, the precision the CPU kernels take, so both paths
compute with the same scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INT4_GROUP_SIZE = 32


class QuantizedLinear(nn.Module):
    """A Linear layer whose weight is stored as int8 or packed int4, plus float scales."""

    def __init__(
        self, linear: nn.Linear, bits: int, group_size: int = INT4_GROUP_SIZE, cpu_kernels: bool | None = None
    ):
        """`cpu_kernels`: use PyTorch's packed CPU kernels (default: when the weight is on CPU)."""
        super().__init__()
        if bits not in (8, 4):
            raise ValueError(f"bits must be 8 or 4, not {bits}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.group_size = bits, group_size
        weight = linear.weight.detach()
        self.on_cpu = weight.device.type == "cpu" if cpu_kernels is None else cpu_kernels
        qweight, scales = (quantize_int8 if bits == 8 else quantize_int4)(weight, group_size)
        if bits == 4 and self.on_cpu:
            # The kernel's own layouts: packed codes, and scales with (zero) offsets [in/group, out, 2].
            qweight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(qweight.to(torch.int32), 1)
            scales = torch.stack((scales.t(), torch.zeros_like(scales.t())), dim=-1).contiguous()
        elif bits == 4:
            qweight = (qweight[:, 0::2] | (qweight[:, 1::2] << 4)).to(torch.uint8)  # two nibbles a byte
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.bias = linear.bias

    @classmethod
    def supports(cls, linear: nn.Linear, bits: int, group_size: int = INT4_GROUP_SIZE) -> bool:
        """int4 needs whole groups (and an even width to pack two values a byte)."""
        return bits == 8 or linear.in_features % group_size == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2d = x.reshape(-1, self.in_features)
        if self.on_cpu:
            out = self._cpu_kernel(x2d.to(torch.bfloat16)).to(x.dtype)
        else:
            out = F.linear(x2d, self.dequantize(x.dtype))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def _cpu_kernel(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == 8:
            return torch._weight_int8pack_mm(x, self.qweight, self.scales)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.qweight, self.group_size, self.scales)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight this layer computes with (non-CPU path; also used by tests)."""
        if self.bits == 8:
            return self.qweight.to(dtype) * self.scales.to(dtype)[:, None]
        if self.on_cpu:
            eye = torch.eye(self.in_features, dtype=torch.bfloat16)
            return self._cpu_kernel(eye).t().to(dtype)
        low = (self.qweight & 0x0F).to(torch.int8)
        high = (self.qweight >> 4).to(torch.int8)
        values = torch.stack((low, high), dim=-1).flatten(1).to(dtype) - 8
        groups = values.view(self.out_features, -1, self.group_size) * self.scales.to(dtype)[:, :, None]
        return groups.view(self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


def quantize_int8(weight: torch.Tensor, group_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values in [-127, 127] and per-row scales (bfloat16), so that weight ~ q * scale."""
    scales = (weight.float().abs().amax(dim=1) / 127).clamp(min=1e-8).to(torch.bfloat16)
    q = torch.round(weight.float() / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Unsigned 4-bit codes q in [0, 15] (value q - 8) and scales [out, in/group] (bfloat16)."""
    rows, cols = weight.shape
    groups = weight.float().view(rows, cols // group_size, group_size)
    scales = (groups.abs().amax(dim=-1) / 7).clamp(min=1e-8).to(torch.bfloat16)
    q = torch.round(groups / scales.float()[:, :, None]).clamp(-8, 7) + 8
    return q.view(rows, cols).to(torch.uint8), scales


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def quantize_linear_layers(model: nn.Module, bits: int, skip: tuple[str, ...] = ()) -> int:
    """Replace every supported nn.Linear of `model` (but those whose name ends with one of
    `skip`) by a QuantizedLinear, in place; return how many were replaced. For models loaded
    whole, as the transformers backend does (the ChatGLM loader quantizes shard by shard)."""
    targets = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not name.endswith(skip) and QuantizedLinear.supports(module, bits)
    ]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, QuantizedLinear(linear, bits))
    return len(targets)
