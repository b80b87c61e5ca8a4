"""The client's address for login throttling (django-axes' AXES_CLIENT_IP_CALLABLE).

Directly served, it is the socket's peer (REMOTE_ADDR). Behind the HTTPS proxy
(CHATGLM_HTTPS=1) every request comes from the proxy, so the address is the last entry of
X-Forwarded-For: the one the proxy itself appended. Earlier entries are the client's to
write, and trusting them would let an attacker pick a fresh address per attempt.
"""

from __future__ import annotations

from django.conf import settings


def client_ip(request) -> str | None:
    if getattr(settings, "HTTPS", False):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last
    return request.META.get("REMOTE_ADDR") or None
