"""The machine a benchmark ran on, printed and recorded with its figures: they mean little
without it (a run on another CPU, or one without AVX-512 or AMX, is not comparable).

    from bench.machine import cpu_info, describe
    cpu = cpu_info()
    print(describe(cpu))
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The SIMD and matrix extensions the torch, llama.cpp and grammar-mask loops use; the full list
# is hundreds of names that say nothing about these benchmarks. neon/asimd are ARM's.
FLAGS = ("avx", "avx2", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni", "avx_vnni",
         "amx_tile", "amx_int8", "amx_bf16", "fma", "f16c", "neon", "asimd")


def cpu_info() -> dict:
    """{"model": str, "flags": list[str] (those of FLAGS present, in FLAGS' order), "cores": int}.

    x86 names the CPU in "model name" and lists "flags"; ARM may give only "Model" (or nothing,
    on servers) and lists "Features". Without /proc/cpuinfo (not Linux) the platform's name stands.
    """
    model, present = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not present:  # every core repeats them: the first will do
            present = set(value.split())
    return {"model": model or platform.processor() or platform.machine(),
            "flags": [flag for flag in FLAGS if flag in present],
            "cores": os.cpu_count() or 1}


def describe(cpu: dict) -> str:
    """The one line a benchmark prints about its machine."""
    return f"CPU: {cpu['model']}, {cpu['cores']} cores, flags: {' '.join(cpu['flags']) or '-'}"
