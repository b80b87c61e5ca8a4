"""Sign up, log in, log out; anonymous conversations follow the visitor into the account."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.models import User
from django.test import Client

from chat.models import Conversation
from chat.owners import VISITOR_SESSION_KEY

pytestmark = pytest.mark.django_db

PASSWORD = "a-Long-pass-4321"


def start_anonymous_conversation(client, title="anonymous chat") -> str:
    r = client.post("/api/conversations", {"title": title}, content_type="application/json")
    assert r.status_code == 201, r.content
    return r.json()["id"]


def listed_ids(client) -> list[str]:
    return [c["id"] for c in client.get("/api/conversations").json()["conversations"]]


@pytest.mark.parametrize("name, path", [("login", "/accounts/login/"), ("logout", "/accounts/logout/"),
                                        ("signup", "/accounts/signup/")])
def test_url_names(name, path):
    from django.urls import reverse

    assert reverse(name) == path


@pytest.mark.parametrize("path", ["/accounts/login/", "/accounts/signup/"])
def test_forms_render_inside_the_base_template(client, path):
    r = client.get(path)
    assert r.status_code == 200
    assert "chat/base.html" in [t.name for t in r.templates]
    html = r.content.decode()
    assert '<main class="auth-card">' in html and "csrfmiddlewaretoken" in html


def test_signup_creates_the_user_logs_in_and_adopts(client):
    conversation_id = start_anonymous_conversation(client)
    r = client.post("/accounts/signup/", {"username": "carol", "password1": PASSWORD, "password2": PASSWORD})
    assert r.status_code == 302 and r["Location"] == "/"
    carol = User.objects.get(username="carol")
    assert carol.check_password(PASSWORD)
    assert client.session[SESSION_KEY] == str(carol.pk)
    assert VISITOR_SESSION_KEY not in client.session
    row = Conversation.objects.get(pk=conversation_id)
    assert (row.user_id, row.visitor) == (carol.pk, None)
    assert listed_ids(client) == [conversation_id]


def test_signup_follows_a_safe_next_only(client):
    r = client.post("/accounts/signup/?next=/admin/", {"username": "dan", "password1": PASSWORD,
                                                       "password2": PASSWORD, "next": "/admin/"})
    assert r["Location"] == "/admin/"
    other = Client()
    r = other.post("/accounts/signup/", {"username": "eve", "password1": PASSWORD, "password2": PASSWORD,
                                         "next": "https://evil.example/"})
    assert r["Location"] == "/"


def test_signup_errors_re_render_the_form_and_create_nobody(client):
    conversation_id = start_anonymous_conversation(client)
    r = client.post("/accounts/signup/", {"username": "frank", "password1": PASSWORD, "password2": "different"})
    assert r.status_code == 200
    assert r.context["form"].errors
    assert not User.objects.filter(username="frank").exists()
    assert SESSION_KEY not in client.session
    assert Conversation.objects.get(pk=conversation_id).visitor is not None  # still the visitor's


def test_signup_refuses_a_taken_username(client):
    User.objects.create_user("grace", password=PASSWORD)
    r = client.post("/accounts/signup/", {"username": "grace", "password1": PASSWORD, "password2": PASSWORD})
    assert r.status_code == 200 and "username" in r.context["form"].errors
    assert User.objects.filter(username="grace").count() == 1


def test_login_adopts_and_keeps_older_account_conversations(client):
    heidi = User.objects.create_user("heidi", password=PASSWORD)
    older = Conversation.objects.create(user=heidi, title="from last week")
    anonymous = start_anonymous_conversation(client)
    someone_elses = start_anonymous_conversation(Client(), "another visitor")

    r = client.post("/accounts/login/", {"username": "heidi", "password": PASSWORD})
    assert r.status_code == 302
    assert set(listed_ids(client)) == {anonymous, str(older.pk)}
    assert Conversation.objects.get(pk=someone_elses).user is None


def test_failed_login_adopts_nothing(client):
    User.objects.create_user("ivan", password=PASSWORD)
    conversation_id = start_anonymous_conversation(client)
    r = client.post("/accounts/login/", {"username": "ivan", "password": "wrong"})
    assert r.status_code == 200 and r.context["form"].errors
    assert Conversation.objects.get(pk=conversation_id).user is None
    assert listed_ids(client) == [conversation_id]


def test_login_with_a_corrupt_visitor_value_still_works(client):
    User.objects.create_user("judy", password=PASSWORD)
    session = client.session
    session[VISITOR_SESSION_KEY] = "not-a-uuid"
    session.save()
    r = client.post("/accounts/login/", {"username": "judy", "password": PASSWORD})
    assert r.status_code == 302
    assert VISITOR_SESSION_KEY not in client.session


def test_logout_is_post_only_and_starts_a_fresh_anonymous_identity(client):
    mallory = User.objects.create_user("mallory", password=PASSWORD)
    client.force_login(mallory)
    mine = client.post("/api/conversations", {}, content_type="application/json").json()["id"]

    assert client.get("/accounts/logout/").status_code == 405
    assert client.session[SESSION_KEY] == str(mallory.pk)

    r = client.post("/accounts/logout/")
    assert r.status_code == 302 and r["Location"] == "/"
    assert SESSION_KEY not in client.session
    assert listed_ids(client) == []  # the account's conversations are not the new visitor's
    assert client.get(f"/api/conversations/{mine}").status_code == 404
    fresh = start_anonymous_conversation(client)
    assert Conversation.objects.get(pk=fresh).visitor == uuid.UUID(client.session[VISITOR_SESSION_KEY])


def test_logged_in_users_are_sent_away_from_the_forms(client):
    client.force_login(User.objects.create_user("niaj", password=PASSWORD))
    assert client.get("/accounts/signup/")["Location"] == "/"
    assert client.get("/accounts/login/")["Location"] == "/"
