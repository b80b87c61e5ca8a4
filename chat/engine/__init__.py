"""The model side of the site: knows nothing of HTTP, WebSocket or the ORM.

`get_engine()` returns the process-wide Engine; the first call starts its thread, which
loads the model named by the environment (see config.py) once for every protocol.
"""

from __future__ import annotations

import threading

from .config import EngineConfig
from .constraints import Constraint, UnsupportedConstraint  # noqa: F401
from .scheduler import Engine
from .vocabulary import (  # noqa: F401 - the engine's public vocabulary
    EngineError,
    EngineOverloaded,
    EngineUnavailable,
    GenerationParams,
    GenerationResult,
    QueuePosition,
    Started,
    TextDelta,
    TokenLogprob,
    TopLogprob,
)

_engine: Engine | None = None
_lock = threading.Lock()


def get_engine() -> Engine:
    global _engine
    with _lock:
        if _engine is None:
            from .backends import create_backend

            config = EngineConfig.from_env()
            _engine = Engine(lambda: create_backend(config), max_queue=config.max_queue,
                             max_waiting_per_owner=config.max_queued_per_client)
        return _engine


def reset_engine() -> None:
    """Stop and forget the engine (tests that change the model's environment use this)."""
    global _engine
    with _lock:
        if _engine is not None:
            _engine.stop()
        _engine = None
