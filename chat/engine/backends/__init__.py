"""Backend selection: which class serves `CHATGLM_MODEL` (imports are lazy: torch is heavy)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..backend import Backend
from ..config import DEFAULT_MODEL, ConfigError, EngineConfig

log = logging.getLogger(__name__)


def _is_gguf(config: EngineConfig) -> bool:
    return config.model == DEFAULT_MODEL or config.model.endswith(".gguf")


def _llamacpp_has_gpu() -> bool:
    from .llamacpp import has_gpu

    return has_gpu()


def auto_choice(config: EngineConfig) -> tuple[str, str]:
    """`auto`'s pick and why: fake for `fake`, openai for an upstream URL, chatglm for a ChatGLM
    checkpoint directory (config.json `model_type: chatglm`; its golden answers are exact there),
    llamacpp for a .gguf file and the embedded default (unless a GPU is asked for and the
    xllamacpp build has none: then transformers), transformers for other directories."""
    if config.model == "fake":
        return "fake", "the test double"
    if config.upstream_url:
        return "openai", "an upstream URL is set"
    if _is_gguf(config):
        if config.device >= 0 and not _llamacpp_has_gpu():
            return "transformers", f"--device {config.device} asks for a GPU and this xllamacpp build is CPU-only"
        return "llamacpp", "a GGUF file"
    config_file = Path(config.model) / "config.json"
    if config_file.is_file():
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {config_file}: {exc}") from exc
        if model_type == "chatglm":
            return "chatglm", "a ChatGLM checkpoint"
    return "transformers", "a Hugging Face checkpoint"


def resolve_backend_name(config: EngineConfig) -> str:
    return config.backend if config.backend != "auto" else auto_choice(config)[0]


def create_backend(config: EngineConfig) -> Backend:
    name = resolve_backend_name(config)
    if config.backend == "auto":
        log.info("backend %s (auto: %s)", name, auto_choice(config)[1])
    if name == "fake":
        from .fake import FakeBackend

        return FakeBackend.from_config(config)
    if name == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(config)
    if name == "transformers":
        from .transformers import TransformersBackend

        return TransformersBackend(config)
    if name == "chatglm":
        from .chatglm import ChatGLMBackend

        return ChatGLMBackend(config)
    if name == "openai":
        from .upstream import UpstreamBackend

        return UpstreamBackend(config)
    raise ConfigError(f"unknown backend {name!r}")


def check_model_exists(config: EngineConfig) -> None:
    """Fail early, with one line, when the model path does not exist or a flag cannot apply."""
    name = resolve_backend_name(config)
    if name in ("fake", "openai"):
        return
    if config.model != DEFAULT_MODEL and not Path(config.model).exists():
        raise ConfigError(f"model not found: {config.model} (a local directory or .gguf file)")
    if name == "llamacpp":
        if config.quantize != 16 and _is_gguf(config):
            raise ConfigError("--quantize does not apply to a GGUF file, which is quantized already "
                              "(--backend transformers dequantizes it and can quantize again)")
        if config.device >= 0 and not _llamacpp_has_gpu():
            raise ConfigError(f"--device {config.device}: this xllamacpp build is CPU-only "
                              "(use --device -1, or --backend transformers on the GPU)")
