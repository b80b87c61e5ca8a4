from __future__ import annotations

from pathlib import Path

import pytest

from chat.engine.config import EngineConfig

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "data" / "models"  # the project's default cache: converted once, shared with `make run`


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded SmolLM2 as a transformers directory (dequantized from its GGUF once)."""
    from chat.engine.backends.transformers import TransformersBackend, embedded_gguf, gguf_cache_dir

    cache = gguf_cache_dir(embedded_gguf(), CACHE)
    if not (cache / "config.json").exists():
        TransformersBackend(EngineConfig(model="default", cache_dir=CACHE)).load()
    return cache


@pytest.fixture(scope="session")
def smol_tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)
