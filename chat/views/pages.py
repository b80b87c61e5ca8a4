"""The chat page and the health check."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import JsonResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.csrf import ensure_csrf_cookie

from ..engine import get_engine
from ..owners import PAGE_SESSION_KEY, VISITOR_SESSION_KEY
from ..upstream_health import health_fields


@ensure_csrf_cookie
def index(request):
    """The chat page. An anonymous visitor gets their visitor id (and session cookie) here, so
    their conversations are theirs from the first question on. The session is marked as one
    that loaded the page: with API keys set, only such a session chats without a key."""
    if not request.user.is_authenticated and settings.CHATGLM["REQUIRE_LOGIN"]:
        return redirect_to_login(request.get_full_path())
    if not request.user.is_authenticated and VISITOR_SESSION_KEY not in request.session:
        request.session[VISITOR_SESSION_KEY] = str(uuid.uuid4())
    if PAGE_SESSION_KEY not in request.session:
        request.session[PAGE_SESSION_KEY] = True
    engine = get_engine()
    model = engine.info.model_id if engine.ready else "loading…"
    return render(request, "chat/index.html", {"model_name": model, "signup_mode": settings.CHATGLM["SIGNUP"]})


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
        **health_fields(engine),  # the upstream engine's reachability (chat/upstream_health.py)
    })


urlpatterns = [
    path("", index, name="index"),
    path("healthz", healthz, name="healthz"),
]
