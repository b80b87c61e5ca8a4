"""The chat page and the health check."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.csrf import ensure_csrf_cookie

from .. import params
from ..owners import PAGE_SESSION_KEY, VISITOR_SESSION_KEY, api_keys
from ..throttle import new_page_session_wait
from ..turns import engine_status


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class SettingField:
    """A generation setting of the page's settings dialog: a parameter of chat.params (its
    name, and its limits from RANGES), drawn as a slider or, without `step`, a box for a whole
    number. The page's script reads the fields from the form, so this list is the only one."""

    name: str
    label: str
    step: float | None = None
    slider_low: float | None = None  # a slider's left end, where RANGES' lowest is no use (top_p 0)
    resting: float | None = None  # where the slider rests while unset: the usual default

    @property
    def id(self) -> str:
        return self.name.replace("_", "-")

    @property
    def low(self) -> str:
        return _number(self.slider_low if self.slider_low is not None else params.RANGES[self.name][0])

    @property
    def high(self) -> str:
        return _number(params.RANGES[self.name][1])

    @property
    def step_text(self) -> str:
        return _number(self.step) if self.step else ""

    @property
    def resting_text(self) -> str:
        return _number(self.resting) if self.resting is not None else ""


SETTING_FIELDS = (
    SettingField("temperature", "Temperature", step=0.05, resting=0.8),
    SettingField("top_p", "Top-p", step=0.05, slider_low=0.05, resting=0.8),
    SettingField("max_length", "Maximum length"),
)


@ensure_csrf_cookie
def index(request):
    """The chat page. Without API keys it makes no session: an anonymous visitor gets one (and
    their visitor id) with their first conversation, so a page load stores nothing. With API keys
    set, only a session that loaded the page chats without a key, so the page makes it and marks
    it; new sessions per address are then rate-limited (CHATGLM_SESSIONS_PER_MINUTE)."""
    if not request.user.is_authenticated and settings.CHATGLM["REQUIRE_LOGIN"]:
        return redirect_to_login(request.get_full_path())
    if api_keys():
        if request.session.session_key is None and (wait := new_page_session_wait()):
            response = HttpResponse("Too many new visits from your address: try again shortly.\n", status=429,
                                    content_type="text/plain; charset=utf-8")
            response["Retry-After"] = str(wait)
            return response
        if not request.user.is_authenticated and VISITOR_SESSION_KEY not in request.session:
            request.session[VISITOR_SESSION_KEY] = str(uuid.uuid4())
        if PAGE_SESSION_KEY not in request.session:
            request.session[PAGE_SESSION_KEY] = True
    status = engine_status()
    model = status["model"] if status["ready"] else "loading…"
    return render(request, "chat/index.html", {"model_name": model, "signup_mode": settings.CHATGLM["SIGNUP"],
                                               "setting_fields": SETTING_FIELDS})


def healthz(request):
    status = engine_status()
    if not status["ready"]:
        return JsonResponse({"status": status["state"], "queue": status["queue"]}, status=503)
    fields = ("model", "backend", "device", "dtype", "quantize", "context_length", "queue", "running")
    return JsonResponse({
        "status": "ok",
        **{name: status[name] for name in fields},
        **status["health"],  # the upstream engine's reachability (chat/upstream_health.py)
    })


urlpatterns = [
    path("", index, name="index"),
    path("healthz", healthz, name="healthz"),
]
