"""CHATGLM_SIGNUP: open, closed, or by invitation (tokens an admin makes in the admin)."""

from __future__ import annotations

import datetime

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from chat.invites import Invite

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def mode(settings):
    def set_mode(value):
        settings.CHATGLM = {**settings.CHATGLM, "SIGNUP": value}
    return set_mode


def sign_up(client, username, **extra):
    return client.post("/accounts/signup/", {"username": username, "password1": PASSWORD, "password2": PASSWORD,
                                             **extra})


def exists(username) -> bool:
    return get_user_model().objects.filter(username=username).exists()


def test_open_signup_makes_an_account(client, mode):
    mode("open")
    assert sign_up(client, "newcomer").status_code == 302 and exists("newcomer")


def test_closed_signup_refuses_and_hides_the_links(client, mode):
    mode("closed")
    assert client.get("/accounts/signup/").status_code == 403
    r = sign_up(client, "script")
    assert r.status_code == 403 and not exists("script")
    assert b"/accounts/signup/" not in client.get("/accounts/login/").content
    assert b"/accounts/signup/" not in client.get("/").content


def test_an_invitation_is_needed_and_used_up(client, mode):
    mode("invite")
    r = sign_up(client, "uninvited")
    assert r.status_code == 200 and not exists("uninvited") and b"invite" in r.content
    assert sign_up(client, "guesser", invite="not-a-token").status_code == 200 and not exists("guesser")
    invite = Invite.objects.create(note="for carol")
    assert invite.token in client.get(f"/accounts/signup/?invite={invite.token}").content.decode()  # pre-filled
    assert sign_up(client, "carol", invite=invite.token).status_code == 302 and exists("carol")
    invite.refresh_from_db()
    assert invite.uses_left == 0
    client.post("/accounts/logout/")
    assert sign_up(client, "carols-friend", invite=invite.token).status_code == 200
    assert not exists("carols-friend")


def test_a_counted_invitation_and_an_expired_one(client, mode):
    mode("invite")
    team = Invite.objects.create(uses_left=2)
    for name in ("dev1", "dev2"):
        assert sign_up(client, name, invite=team.token).status_code == 302
        client.post("/accounts/logout/")
    assert sign_up(client, "dev3", invite=team.token).status_code == 200 and not exists("dev3")
    stale = Invite.objects.create(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert sign_up(client, "late", invite=stale.token).status_code == 200 and not exists("late")


def test_consume_takes_the_last_use_once():
    invite = Invite.objects.create(uses_left=1)
    assert Invite.objects.consume(invite.token)
    assert not Invite.objects.consume(invite.token)
    assert not Invite.objects.consume("")


def test_an_admin_creates_an_invitation_with_its_link(admin_client, admin_user):
    r = admin_client.post("/admin/chat/invite/add/", {
        "note": "for dave", "uses_left": "3",
        "expires_at_0": (timezone.now() + datetime.timedelta(days=2)).strftime("%Y-%m-%d"),
        "expires_at_1": "12:00:00",
    })
    assert r.status_code == 302, r.content.decode()[:2000]
    invite = Invite.objects.get(note="for dave")
    assert invite.uses_left == 3 and invite.created_by == admin_user and len(invite.token) >= 32
    listing = admin_client.get("/admin/chat/invite/").content.decode()
    assert f"/accounts/signup/?invite={invite.token}" in listing
