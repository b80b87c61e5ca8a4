"""Weight-only int8 / int4 quantization: layer accuracy, memory, and the ChatGLM fixtures."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from chat.engine.backends.chatglm import ChatGLMBackend
from chat.engine.config import EngineConfig
from chat.engine.generation import Generation
from chat.engine.networks.loading import load_model
from chat.engine.quantize import QuantizedLinear, weight_bytes
from chat.engine.vocabulary import GenerationParams

from .chatglm_fixtures import FAMILIES, case_messages, checkpoint, golden


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("cpu_kernels", [True, False], ids=["cpu-kernels", "dequantize"])
@pytest.mark.parametrize(("bits", "bound"), [(8, 0.01), (4, 0.1)])
def test_quantized_linear_is_close(bits, bound, cpu_kernels):
    torch.manual_seed(0)
    linear = nn.Linear(256, 320)
    quantized = QuantizedLinear(linear, bits, cpu_kernels=cpu_kernels)
    x = torch.randn(3, 5, 256)
    with torch.no_grad():
        expected = linear(x)
        # measured: int8 0.45%, int4 6.6% (random Gaussian weights: no structure to exploit)
        assert _relative_error(quantized(x), expected) < bound
        assert _relative_error(quantized.dequantize(), linear.weight) < bound
        assert quantized(x).shape == expected.shape


def test_both_int4_layouts_compute_the_same():
    torch.manual_seed(1)
    linear = nn.Linear(64, 96, bias=False)
    x = torch.randn(4, 64)
    packed, plain = QuantizedLinear(linear, 4, cpu_kernels=True), QuantizedLinear(linear, 4, cpu_kernels=False)
    assert torch.allclose(packed.dequantize(), plain.dequantize(), atol=1e-2)
    assert torch.allclose(packed(x), plain(x), atol=2e-2)


def test_int4_needs_whole_groups():
    assert not QuantizedLinear.supports(nn.Linear(48, 8), 4)
    assert QuantizedLinear.supports(nn.Linear(48, 8), 8)


# Measured on the fixtures (logits of all prompt positions, |logit| up to ~18):
#   int8: relative L2 error <= 3.2 %, max abs diff <= 1.13, top-1 agreement >= 96 %
#   int4: relative L2 error <= 40 %,  max abs diff <= 13.5, top-1 agreement ~ 46-53 %
# These tiny checkpoints have random weights and near-flat distributions, which is the worst
# case for 4-bit groups; the bounds below guard against regressions, not promise quality.
BOUNDS = {8: (0.05, 0.9), 4: (0.5, 0.35)}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_fixture_logits_are_close(family, bits):
    reference, _ = load_model(checkpoint(family))
    quantized, _ = load_model(checkpoint(family), quantize=bits)
    assert sum(isinstance(m, QuantizedLinear) for m in quantized.modules()) == 4 * reference.config.num_layers
    max_relative, bound_top1 = BOUNDS[bits]
    agree = total = 0
    for case in golden(family)["cases"]:
        ids = case["prompt_ids"] + case["greedy_ids"]
        expected, actual = reference.score(ids), quantized.score(ids)
        assert _relative_error(actual, expected) < max_relative, case["id"]
        agree += int((expected.argmax(-1) == actual.argmax(-1)).sum())
        total += len(ids)
    assert agree / total >= bound_top1


@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_weights_take_less_memory(family):
    def block_linear_bytes(model):
        return sum(
            weight_bytes(module)
            for name, module in model.named_modules()
            if ".layers." in name and isinstance(module, (nn.Linear, QuantizedLinear))
        )

    sizes = {bits: load_model(checkpoint(family), quantize=bits)[0] for bits in (16, 8, 4)}
    fp32, int8, int4 = (block_linear_bytes(sizes[bits]) for bits in (16, 8, 4))
    assert int8 < 0.3 * fp32  # int8 codes + bf16 scales + float32 biases
    assert int4 < 0.17 * fp32
    assert weight_bytes(sizes[4]) < weight_bytes(sizes[8]) < weight_bytes(sizes[16])


def test_backend_generates_with_int8():
    backend = ChatGLMBackend(EngineConfig(model=str(checkpoint("v2")), backend="chatglm", quantize=8))
    backend.load()
    assert backend.info.quantize == 8
    results = []
    seq = Generation(
        case_messages(golden("v2")["cases"][0]),
        GenerationParams(temperature=0, max_new_tokens=8),
        results.append,
        threading.Event(),
    )
    backend.generate([seq])
    assert seq.result is not None and seq.result.completion_tokens == 8
