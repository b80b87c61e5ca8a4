"""The chat page and the health check."""

from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.csrf import ensure_csrf_cookie

from ..engine import get_engine


@ensure_csrf_cookie
def index(request):
    engine = get_engine()
    model = engine.info.model_id if engine.ready else "loading…"
    return render(request, "chat/index.html", {"model_name": model})


def healthz(request):
    engine = get_engine()
    if not engine.ready:
        status = "loading" if not engine._ready.is_set() else "failed"
        return JsonResponse({"status": status, "queue": engine.queue_length()}, status=503)
    info = engine.info
    return JsonResponse({
        "status": "ok",
        "model": info.model_id,
        "backend": info.backend,
        "device": info.device,
        "dtype": info.dtype,
        "quantize": info.quantize,
        "context_length": info.context_length,
        "queue": engine.queue_length(),
        "running": engine.running_count(),
    })


urlpatterns = [
    path("", index, name="index"),
    path("healthz", healthz, name="healthz"),
]
