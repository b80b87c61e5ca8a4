"""Where a converted file lives in the model cache, and how it gets there safely.

* **Key.** A digest of what the GGUF is made from: the converter's version, the output type,
  the checkpoint's small files (config, tokenizer, index: hashed whole) and, for each weight
  file, its name, its size and a sampled digest (`SAMPLES` blocks of `BLOCK` bytes spread evenly
  through the file, first and last included). A full hash of a 12-18 GB checkpoint costs a full
  read of it at every start (tens of seconds cold: see docs/conversion.md); the samples cost a few
  milliseconds and catch any re-download, re-save or re-shard (sizes, headers and the
  safetensors/pickle tables at the file ends change). What they cannot see is an in-place edit
  of weight bytes that keeps the file size and misses every sample: delete the cached file then.
* **Atomic, single writer.** Conversion runs under an exclusive lock file next to the target;
  it writes a temporary file in the same directory, fsyncs it, and renames it over the target.
  A start that finds the target reuses it; one that waits on the lock finds the target once
  the lock is free. A killed conversion leaves only a temporary file (never taken as a
  result), which the next conversion under the lock deletes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from .source import Checkpoint

CONVERTER_VERSION = "1"  # bump when the output for the same input changes
SMALL_FILE_LIMIT = 16 * 1024 * 1024  # config/tokenizer/index files: hashed whole
SAMPLES = 16
BLOCK = 64 * 1024
TEMP_SUFFIX = ".tmp"


def _sampled_digest(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= SAMPLES * BLOCK:
            digest.update(handle.read())
        else:
            for i in range(SAMPLES):
                handle.seek((size - BLOCK) * i // (SAMPLES - 1))
                digest.update(handle.read(BLOCK))
    return digest.hexdigest()


def checkpoint_key(checkpoint: Checkpoint, outtype: str) -> str:
    digest = hashlib.sha256(f"chatglm-gguf {CONVERTER_VERSION} {checkpoint.kind} {outtype}\n".encode())
    weights = set(checkpoint.files)
    for path in sorted(checkpoint.path.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        size = path.stat().st_size
        if path in weights:
            digest.update(f"weights {path.name} {size} {_sampled_digest(path, size)}\n".encode())
        elif size <= SMALL_FILE_LIMIT and path.suffix in (".json", ".model", ".txt", ".jinja", ".tiktoken"):
            digest.update(f"file {path.name} {size} ".encode() + hashlib.sha256(path.read_bytes()).digest() + b"\n")
    return digest.hexdigest()


def cached_path(cache_dir: Path, checkpoint: Checkpoint, outtype: str) -> Path:
    key = checkpoint_key(checkpoint, outtype)
    return cache_dir / f"{checkpoint.path.name}-{outtype}-{key[:16]}.gguf"


@contextlib.contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold the conversion lock of `target` (blocks while another process converts it)."""
    lock_path = target.with_name(target.name + ".lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stale_temporaries(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*{TEMP_SUFFIX}"))


def temporary_for(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}{TEMP_SUFFIX}")


def publish(temporary: Path, target: Path) -> None:
    """Make a fully written temporary file the target, atomically and durably."""
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
