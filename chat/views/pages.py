"""The chat page and the health check."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import JsonResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.csrf import ensure_csrf_cookie

from ..engine import get_engine


@ensure_csrf_cookie
def index(request):
    """The chat page. It makes no session: an anonymous visitor gets one (and their visitor id)
    with their first conversation (POST /api/conversations), so a page load stores nothing."""
    if not request.user.is_authenticated and settings.CHATGLM["REQUIRE_LOGIN"]:
        return redirect_to_login(request.get_full_path())
    engine = get_engine()
    model = engine.info.model_id if engine.ready else "loading…"
    return render(request, "chat/index.html", {"model_name": model})


def healthz(request):
    engine = get_engine()
    if not engine.ready:
        return JsonResponse({"status": engine.state, "queue": engine.queue_length()}, status=503)
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
