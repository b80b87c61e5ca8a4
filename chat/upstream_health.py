"""Whether the upstream inference engine answers, for /healthz (the `openai` backend only).

Asked at most every CHECK_SECONDS (a health check polled by a proxy, compose and Prometheus
must not become load on the engine), with a short timeout so that /healthz itself stays quick.
"""

from __future__ import annotations

import threading
import time

import httpx

CHECK_SECONDS = 2.0
TIMEOUT_SECONDS = 2.0

_lock = threading.Lock()
_last: tuple[float, bool] = (0.0, False)


def upstream_reachable(backend) -> bool:
    global _last
    with _lock:
        checked_at, reachable = _last
        if time.monotonic() - checked_at < CHECK_SECONDS:
            return reachable
        try:
            response = httpx.get(f"{backend.base_url}/models", headers=backend._headers(), timeout=TIMEOUT_SECONDS,
                                 trust_env=False)
            reachable = response.status_code == 200
        except httpx.HTTPError:
            reachable = False
        _last = (time.monotonic(), reachable)
        return reachable


def health_fields(engine) -> dict:
    """Extra /healthz fields: {"upstream": {"reachable": bool}} and status `degraded` when not."""
    if engine.info.backend != "openai":
        return {}
    reachable = upstream_reachable(engine.backend)
    return {"upstream": {"reachable": reachable}, **({} if reachable else {"status": "degraded"})}
