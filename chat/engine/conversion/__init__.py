"""Checkpoint -> GGUF conversion for the llama.cpp backend (ChatGLM2/3, GLM-4): see docs/conversion.md.

`ensure_gguf()` is the one entry point: it returns the cached GGUF of a checkpoint, converting it
once when the cache has none.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..config import ConfigError
from .cache import cached_path, exclusive, publish, stale_temporaries, temporary_for
from .source import inspect_checkpoint
from .writer import write_gguf

__all__ = ["ensure_gguf", "OUTTYPE_FOR_BITS", "ConfigError"]

log = logging.getLogger(__name__)

# --quantize 16/8/4; 32 (float32 matrices) is not a user setting: tests use it to compare
# against float32 references without the F16 rounding of activations in llama.cpp's matmuls.
OUTTYPE_FOR_BITS = {32: "f32", 16: "f16", 8: "q8_0", 4: "q4_0"}


def ensure_gguf(checkpoint_dir: Path, cache_dir: Path, quantize: int) -> Path:
    """The GGUF of `checkpoint_dir` at `quantize` bits in `cache_dir`, converting it if absent.

    Raises ConfigError (one line) for a checkpoint llama.cpp cannot serve.
    """
    if quantize not in OUTTYPE_FOR_BITS:
        raise ConfigError(f"quantize must be 16, 8 or 4, not {quantize!r}")
    outtype = OUTTYPE_FOR_BITS[quantize]
    checkpoint = inspect_checkpoint(Path(checkpoint_dir))
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cached_path(cache_dir, checkpoint, outtype)
    if target.is_file():
        log.info("using cached GGUF %s", target)
        return target
    with exclusive(target):
        if target.is_file():  # another process converted it while we waited for the lock
            log.info("using cached GGUF %s (converted by another process)", target)
            return target
        for leftover in stale_temporaries(target):
            log.warning("deleting %s, left by an interrupted conversion", leftover)
            leftover.unlink(missing_ok=True)
        temporary = temporary_for(target)
        log.info("converting %s (%s) to %s GGUF: %s", checkpoint.path, checkpoint.kind, outtype, target)
        started = time.monotonic()
        try:
            write_gguf(checkpoint, temporary, outtype)
            publish(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        log.info("converted %s in %.1f s (%.1f MB)", target.name, time.monotonic() - started, target.stat().st_size / 1e6)
    return target
