"""GET /metrics: Prometheus's text format, protected like the program API when keys are set."""

from __future__ import annotations

from django.http import HttpResponse
from django.urls import path

from ..metrics import exposition
from ..owners import api_key_name, api_keys, bearer_token, unauthorized
from .common import error_response


def metrics(request):
    if api_keys() and api_key_name(bearer_token(request.headers.get("Authorization", ""))) is None:
        return error_response(unauthorized("Missing or invalid API key: send 'Authorization: Bearer <key>'."))
    body, content_type = exposition()
    return HttpResponse(body, content_type=content_type)


urlpatterns = [path("metrics", metrics, name="metrics")]
