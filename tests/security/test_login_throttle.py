"""django-axes on this project's login view, through the ASGI stack: failed logins lock out that
username from that address until the cool-off has passed, the right password included."""

from __future__ import annotations

import datetime
import re
import subprocess
import sys

import httpx
import pytest
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.test import AsyncClient

from tests.server import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


class ClientAt(AsyncClient):
    """A test client whose requests come from `address` (the ASGI scope's client)."""

    def __init__(self, address: str):
        super().__init__()
        self.address = address

    def _base_scope(self, **request):
        return {**super()._base_scope(**request), "client": [self.address, 40000]}


async def login(username, password, address="127.0.0.1", **headers):
    return await ClientAt(address).post("/accounts/login/", {"username": username, "password": password},
                                        headers=headers)


async def test_failed_logins_lock_out_the_username_from_that_address_until_the_cool_off(alice):
    assert django_settings.AXES_FAILURE_LIMIT == 5
    for _ in range(django_settings.AXES_FAILURE_LIMIT - 1):
        r = await login("alice", "wrong")
        assert r.status_code == 200 and b"Please enter a correct username and password" in r.content
    r = await login("alice", "wrong")  # the fifth failure locks
    assert r.status_code == 429 and b"Too many failed logins" in r.content
    r = await login("alice", "pw-alice-123")  # the right password is refused during the cool-off
    assert r.status_code == 429 and django_settings.SESSION_COOKIE_NAME not in r.cookies
    # Another address, or another username from this address, is not locked out.
    assert (await login("alice", "pw-alice-123", address="10.0.0.2")).status_code == 302
    # Once the cool-off has passed (the attempts dated back past it), the password works again.
    back = django_settings.AXES_COOLOFF_TIME + datetime.timedelta(seconds=1)
    async for attempt in AccessAttempt.objects.all():
        attempt.attempt_time -= back
        await attempt.asave()
    r = await login("alice", "pw-alice-123")
    assert r.status_code == 302 and django_settings.SESSION_COOKIE_NAME in r.cookies


async def test_another_username_from_the_locked_address_may_log_in(alice, bob):
    for _ in range(django_settings.AXES_FAILURE_LIMIT):
        await login("alice", "wrong")
    assert (await login("alice", "pw-alice-123")).status_code == 429
    assert (await login("bob", "pw-bob-123")).status_code == 302


async def test_behind_the_https_proxy_the_address_is_the_one_the_proxy_saw(alice, settings):
    settings.HTTPS = True
    proxy = "10.0.0.1"
    for _ in range(settings.AXES_FAILURE_LIMIT):
        # The client writes what it likes at the front of X-Forwarded-For; the proxy appends the truth.
        await login("alice", "wrong", address=proxy, **{"X-Forwarded-For": f"6.6.6.{_}, 203.0.113.7"})
    assert (await login("alice", "pw-alice-123", address=proxy,
                        **{"X-Forwarded-For": "6.6.6.99, 203.0.113.7"})).status_code == 429
    assert (await login("alice", "pw-alice-123", address=proxy,
                        **{"X-Forwarded-For": "198.51.100.4"})).status_code == 302


def test_the_lockout_on_a_real_daphne_server(server_factory):
    """The same through Daphne, as a browser logs in (the form's CSRF token, cookies)."""
    server = server_factory.start(env={"CHATGLM_LOGIN_FAILURES": "3"})
    env = {**server.env, "DJANGO_SUPERUSER_PASSWORD": "erin password 123"}
    made = subprocess.run([sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", "erin",
                           "--email", "erin@example.com"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr

    def attempt(password: str, path: str = "/accounts/login/") -> httpx.Response:
        with httpx.Client(base_url=server.url) as client:
            form = client.get(path)
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
            return client.post(path, data={"username": "erin", "password": password, "csrfmiddlewaretoken": token})

    assert [attempt("wrong").status_code for _ in range(2)] == [200, 200]
    assert attempt("wrong").status_code == 429
    locked = attempt("erin password 123")
    assert locked.status_code == 429 and "sessionid" not in locked.cookies
    assert attempt("erin password 123", "/admin/login/").status_code == 429  # the admin's login too
