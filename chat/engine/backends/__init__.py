"""Backend selection: which class serves `CHATGLM_MODEL` (imports are lazy: torch is heavy)."""

from __future__ import annotations

import json
from pathlib import Path

from ..base import Backend
from ..config import DEFAULT_MODEL, ConfigError, EngineConfig


def resolve_backend_name(config: EngineConfig) -> str:
    """`auto` picks: fake for `fake`, openai for an upstream URL, chatglm for a ChatGLM
    checkpoint directory (config.json `model_type: chatglm`), transformers otherwise."""
    if config.backend != "auto":
        return config.backend
    if config.model == "fake":
        return "fake"
    if config.upstream_url:
        return "openai"
    config_file = Path(config.model) / "config.json"
    if config.model != DEFAULT_MODEL and config_file.is_file():
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {config_file}: {exc}") from exc
        if model_type == "chatglm":
            return "chatglm"
    return "transformers"


def create_backend(config: EngineConfig) -> Backend:
    name = resolve_backend_name(config)
    if name == "fake":
        from .fake import FakeBackend

        return FakeBackend.from_env()
    if name == "transformers":
        from .transformers import TransformersBackend

        return TransformersBackend(config)
    if name == "chatglm":
        from .chatglm import ChatGLMBackend

        return ChatGLMBackend(config)
    if name == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend(config)
    raise ConfigError(f"unknown backend {name!r}")


def check_model_exists(config: EngineConfig) -> None:
    """Fail early, with one line, when the model path does not exist."""
    if resolve_backend_name(config) in ("fake", "openai") or config.model == DEFAULT_MODEL:
        return
    if not Path(config.model).exists():
        raise ConfigError(f"model not found: {config.model} (a local directory or .gguf file)")
