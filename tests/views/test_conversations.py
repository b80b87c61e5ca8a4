"""The page's conversation API: every endpoint, its errors, and ownership isolation."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from chat import turns
from chat.models import TITLE_MAX_LENGTH, Conversation, Message, Role
from chat.owners import VISITOR_SESSION_KEY

pytestmark = pytest.mark.django_db

API = "/api/conversations"


def url(conversation_id) -> str:
    return f"{API}/{conversation_id}"


def post(client, path, data, **kwargs):
    body = data if isinstance(data, (str, bytes)) else json.dumps(data)
    return client.post(path, body, content_type=kwargs.pop("content_type", "application/json"), **kwargs)


def patch(client, path, data, **kwargs):
    body = data if isinstance(data, (str, bytes)) else json.dumps(data)
    return client.patch(path, body, content_type=kwargs.pop("content_type", "application/json"), **kwargs)


def assert_error(response, status, code=None, param=None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def snapshot() -> list:
    """Everything stored about conversations, to assert a refused request changed nothing."""
    return [
        list(Conversation.objects.order_by("pk").values()),
        list(Message.objects.order_by("pk").values()),
    ]


@pytest.fixture
def alice_client(alice):
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def bob_client(bob):
    client = Client()
    client.force_login(bob)
    return client


def add_turn(conversation, question="q", answer="a", finish_reason="stop", **answer_fields):
    position = conversation.messages.count()
    Message.objects.create(conversation=conversation, position=position, role=Role.USER, content=question)
    return Message.objects.create(conversation=conversation, position=position + 1, role=Role.ASSISTANT,
                                  content=answer, finish_reason=finish_reason, **answer_fields)


# -- create ------------------------------------------------------------------------------------


def test_create_empty_conversation_as_anonymous_visitor(client):
    r = post(client, API, {})
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["title"] == "" and body["messages"] == [] and body["generating"] is False
    assert body["source"] == "web" and body["system_prompt"] == "" and body["settings"] == {}
    row = Conversation.objects.get(pk=body["id"])
    assert row.user is None and str(row.visitor) == client.session[VISITOR_SESSION_KEY]


def test_create_with_title_system_prompt_and_settings(alice_client, alice):
    r = post(alice_client, API, {"title": "  Trip plans  ", "system_prompt": "Be brief.",
                                 "settings": {"temperature": 0.7, "top_p": 0.9, "max_length": 2048}})
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["title"] == "Trip plans"
    assert body["system_prompt"] == "Be brief."
    assert body["settings"] == {"temperature": 0.7, "top_p": 0.9, "max_length": 2048}
    assert Conversation.objects.get(pk=body["id"]).user == alice
    assert VISITOR_SESSION_KEY not in alice_client.session


@pytest.mark.parametrize("body, code, param", [
    ("{not json", "invalid_json", None),
    ("[1, 2]", "invalid_json", None),
    ({"title": 5}, "invalid_type", "title"),
    ({"title": "x" * (TITLE_MAX_LENGTH + 1)}, "too_long", "title"),
    ({"system_prompt": ["no"]}, "invalid_type", "system_prompt"),
    ({"settings": "hot"}, "invalid_type", "settings"),
    ({"settings": {"temperature": 2.5}}, "invalid_value", "settings.temperature"),
    ({"settings": {"top_p": -0.1}}, "invalid_value", "settings.top_p"),
    ({"settings": {"max_length": 1.5}}, "invalid_type", "settings.max_length"),
    ({"settings": {"max_new_tokens": "many"}}, "invalid_type", "settings.max_new_tokens"),
    ({"settings": {"temperature": True}}, "invalid_type", "settings.temperature"),
    ({"settings": {"colour": "blue"}}, "unknown_field", "settings.colour"),
    ({"owner": "bob"}, "unknown_field", "owner"),
])
def test_create_refuses_bad_input_and_stores_nothing(client, body, code, param):
    r = post(client, API, body)
    assert_error(r, 400, code, param)
    assert Conversation.objects.count() == 0
    assert VISITOR_SESSION_KEY not in client.session  # not even a visitor identity


def test_create_needs_a_json_body(client):
    assert_error(client.post(API, {"title": "form"}), 415, "unsupported_media_type")
    assert Conversation.objects.count() == 0


# -- list --------------------------------------------------------------------------------------


def test_list_is_empty_for_a_new_visitor_and_creates_no_session(client):
    r = client.get(API)
    assert r.status_code == 200
    assert r.json() == {"conversations": [], "page": 1, "has_next": False}
    assert "sessionid" not in r.cookies


def test_list_newest_first_with_counts(alice_client, alice):
    old = Conversation.objects.create(user=alice, title="old", model="m1")
    add_turn(old)
    new = Conversation.objects.create(user=alice, title="new")
    Conversation.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    body = alice_client.get(API).json()
    assert [c["id"] for c in body["conversations"]] == [str(new.pk), str(old.pk)]
    first, second = body["conversations"]
    assert set(second) == {"id", "title", "source", "model", "created_at", "updated_at", "message_count"}
    assert (second["title"], second["model"], second["message_count"]) == ("old", "m1", 2)
    assert first["message_count"] == 0


def test_list_pages_of_fifty(alice_client, alice):
    now = timezone.now()
    Conversation.objects.bulk_create([Conversation(user=alice, title=f"c{i}") for i in range(55)])
    for i, pk in enumerate(Conversation.objects.order_by("title").values_list("pk", flat=True)):
        Conversation.objects.filter(pk=pk).update(updated_at=now - timedelta(minutes=i))
    page1 = alice_client.get(API).json()
    assert (len(page1["conversations"]), page1["page"], page1["has_next"]) == (50, 1, True)
    page2 = alice_client.get(API, {"page": 2}).json()
    assert (len(page2["conversations"]), page2["page"], page2["has_next"]) == (5, 2, False)
    seen = [c["id"] for c in page1["conversations"] + page2["conversations"]]
    assert len(set(seen)) == 55
    assert alice_client.get(API, {"page": 3}).json()["conversations"] == []


def test_list_searches_titles(alice_client, alice):
    Conversation.objects.create(user=alice, title="Rust lifetimes")
    Conversation.objects.create(user=alice, title="Trip to Kyoto")
    Conversation.objects.create(user=alice, title="rusty bike")
    titles = {c["title"] for c in alice_client.get(API, {"q": "RUST"}).json()["conversations"]}
    assert titles == {"Rust lifetimes", "rusty bike"}


@pytest.mark.parametrize("query, param", [({"page": "0"}, "page"), ({"page": "two"}, "page"),
                                          ({"page": "-1"}, "page"), ({"q": "x" * 201}, "q")])
def test_list_refuses_bad_parameters(alice_client, query, param):
    assert_error(alice_client.get(API, query), 400, param=param)


# -- detail ------------------------------------------------------------------------------------


def test_detail_has_messages_and_settings(alice_client, alice):
    c = Conversation.objects.create(user=alice, title="t", system_prompt="sys", settings={"temperature": 0.2})
    Message.objects.create(conversation=c, position=0, role=Role.SYSTEM, content="sys")
    add_turn(c, "hi", "hello", completion_tokens=10, prompt_tokens=5, duration=2.0, time_to_first_token=1.0)
    body = alice_client.get(url(c.pk)).json()
    assert (body["id"], body["title"], body["system_prompt"], body["settings"]) == (str(c.pk), "t", "sys", {"temperature": 0.2})
    assert body["generating"] is False
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant"]
    answer = body["messages"][2]
    assert {"id", "role", "content", "finish_reason", "prompt_tokens", "completion_tokens", "time_to_first_token",
            "duration", "tokens_per_second", "error", "created_at"} <= set(answer)
    assert (answer["content"], answer["finish_reason"], answer["tokens_per_second"]) == ("hello", "stop", 10.0)


def test_detail_says_when_an_answer_is_being_generated(alice_client, alice, monkeypatch):
    c = Conversation.objects.create(user=alice)
    answer = add_turn(c, finish_reason="")
    assert alice_client.get(url(c.pk)).json()["generating"] is True  # saved as still generating
    Message.objects.filter(pk=answer.pk).update(finish_reason="stop")
    assert alice_client.get(url(c.pk)).json()["generating"] is False
    monkeypatch.setitem(turns._live_turns, str(c.pk), object())  # a turn running in this process
    assert alice_client.get(url(c.pk)).json()["generating"] is True


# -- update ------------------------------------------------------------------------------------


def test_rename_strips_the_title(alice_client, alice):
    c = Conversation.objects.create(user=alice, title="old")
    r = patch(alice_client, url(c.pk), {"title": "  New name  "})
    assert r.status_code == 200, r.content
    assert r.json()["title"] == "New name"
    c.refresh_from_db()
    assert c.title == "New name"
    r = patch(alice_client, url(c.pk), {"title": "x" * TITLE_MAX_LENGTH})
    assert r.status_code == 200


def test_update_system_prompt_and_merge_settings(alice_client, alice):
    c = Conversation.objects.create(user=alice, settings={"temperature": 0.5, "top_p": 0.8})
    r = patch(alice_client, url(c.pk), {"system_prompt": "Answer in French.",
                                        "settings": {"temperature": 1.2, "top_p": None, "max_new_tokens": 256}})
    assert r.status_code == 200, r.content
    assert r.json()["settings"] == {"temperature": 1.2, "max_new_tokens": 256}
    c.refresh_from_db()
    assert c.system_prompt == "Answer in French."
    assert c.settings == {"temperature": 1.2, "max_new_tokens": 256}


@pytest.mark.parametrize("body, code, param", [
    ({"title": ""}, "empty", "title"),
    ({"title": "   \n"}, "empty", "title"),
    ({"title": None}, "invalid_type", "title"),
    ({"title": "x" * (TITLE_MAX_LENGTH + 1)}, "too_long", "title"),
    ({"title": "ok", "settings": {"temperature": 3}}, "invalid_value", "settings.temperature"),
    ({"title": "ok", "settings": {"top_p": 1.5}}, "invalid_value", "settings.top_p"),
    ({"title": "ok", "settings": {"max_length": 0}}, "invalid_value", "settings.max_length"),
    ({"title": "ok", "settings": []}, "invalid_type", "settings"),
    ({"title": "ok", "user": 1}, "unknown_field", "user"),
    ({}, "empty", None),
    ("{\"title\": ", "invalid_json", None),
    ("\"just a string\"", "invalid_json", None),
])
def test_update_refuses_bad_input_and_changes_nothing(alice_client, alice, body, code, param):
    c = Conversation.objects.create(user=alice, title="keep", settings={"temperature": 0.5})
    add_turn(c)
    before = snapshot()
    assert_error(patch(alice_client, url(c.pk), body), 400, code, param)
    assert snapshot() == before


# -- delete ------------------------------------------------------------------------------------


def test_delete_removes_the_conversation_and_its_messages(alice_client, alice):
    c = Conversation.objects.create(user=alice)
    add_turn(c)
    kept = Conversation.objects.create(user=alice)
    add_turn(kept)
    r = alice_client.delete(url(c.pk))
    assert r.status_code == 204 and r.content == b""
    assert not Conversation.objects.filter(pk=c.pk).exists()
    assert not Message.objects.filter(conversation_id=c.pk).exists()
    assert Message.objects.filter(conversation=kept).count() == 2
    assert_error(alice_client.delete(url(c.pk)), 404, "not_found")


def test_delete_stops_a_running_answer(alice_client, alice, monkeypatch):
    c = Conversation.objects.create(user=alice)

    class FakeTurn:
        cancelled = False

        def cancel(self):
            self.cancelled = True

    turn = FakeTurn()
    monkeypatch.setitem(turns._live_turns, str(c.pk), turn)
    assert alice_client.delete(url(c.pk)).status_code == 204
    assert turn.cancelled


# -- export ------------------------------------------------------------------------------------


def test_export_json(alice_client, alice):
    c = Conversation.objects.create(user=alice, title="Café talk", model="fake", system_prompt="sys")
    add_turn(c, "你好", "hello 🙂", completion_tokens=3)
    r = alice_client.get(f"{url(c.pk)}/export", {"format": "json"})
    assert r.status_code == 200
    assert r["Content-Type"].startswith("application/json")
    assert r["Content-Disposition"] == f'attachment; filename="cafe-talk-{str(c.pk)[:8]}.json"'
    data = json.loads(r.content)
    assert (data["id"], data["title"], data["model"], data["system_prompt"]) == (str(c.pk), "Café talk", "fake", "sys")
    assert [(m["role"], m["content"]) for m in data["messages"]] == [("user", "你好"), ("assistant", "hello 🙂")]
    assert "owner" not in data
    assert alice_client.get(f"{url(c.pk)}/export").status_code == 200  # json by default


def test_export_markdown(alice_client, alice):
    c = Conversation.objects.create(user=alice, title="", system_prompt="Be brief.")
    add_turn(c, "What is 2+2?", "4")
    add_turn(c, "And 3+3?", "", finish_reason="error", error="boom")
    r = alice_client.get(f"{url(c.pk)}/export", {"format": "md"})
    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/markdown")
    assert r["Content-Disposition"] == f'attachment; filename="conversation-{str(c.pk)[:8]}.md"'
    text = r.content.decode()
    assert text.startswith("# Untitled conversation\n")
    assert "## System\n\nBe brief." in text
    assert "## User\n\nWhat is 2+2?\n\n## Assistant\n\n4" in text
    assert "_(failed: boom)_" in text


def test_export_refuses_unknown_formats(alice_client, alice):
    c = Conversation.objects.create(user=alice)
    assert_error(alice_client.get(f"{url(c.pk)}/export", {"format": "pdf"}), 400, "invalid_value", "format")


# -- ownership ---------------------------------------------------------------------------------


def every_request(client, conversation_id):
    """Each way to touch one conversation, as (name, response)."""
    yield "get", client.get(url(conversation_id))
    yield "patch", patch(client, url(conversation_id), {"title": "stolen", "settings": {"temperature": 2}})
    yield "export", client.get(f"{url(conversation_id)}/export")
    yield "export-md", client.get(f"{url(conversation_id)}/export", {"format": "md"})
    yield "delete", client.delete(url(conversation_id))


def assert_invisible(client, conversation_id):
    """Foreign ids answer exactly like unknown ones: 404 not_found, same body."""
    unknown = uuid.uuid4()
    for (name, foreign), (_, missing) in zip(every_request(client, conversation_id), every_request(client, unknown)):
        error = assert_error(foreign, 404, "not_found")
        assert error == missing.json()["error"], name
    ids = {c["id"] for c in client.get(API).json()["conversations"]}
    assert str(conversation_id) not in ids


def test_users_cannot_see_or_touch_each_others_conversations(alice_client, bob_client, alice):
    c = Conversation.objects.create(user=alice, title="private")
    add_turn(c)
    before = snapshot()
    assert_invisible(bob_client, c.pk)
    assert snapshot() == before
    assert alice_client.get(url(c.pk)).json()["title"] == "private"


def test_anonymous_sessions_are_isolated_from_each_other_and_from_accounts(alice_client):
    first, second = Client(), Client()
    mine = post(first, API, {"title": "first's"}).json()["id"]
    theirs = post(second, API, {"title": "second's"}).json()["id"]
    assert first.session[VISITOR_SESSION_KEY] != second.session[VISITOR_SESSION_KEY]
    assert [c["id"] for c in first.get(API).json()["conversations"]] == [mine]
    assert [c["id"] for c in second.get(API).json()["conversations"]] == [theirs]
    before = snapshot()
    assert_invisible(second, mine)
    assert_invisible(alice_client, mine)
    assert_invisible(Client(), mine)  # a session with no visitor identity at all
    assert snapshot() == before
    alice_own = post(alice_client, API, {}).json()["id"]
    assert_invisible(first, alice_own)


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g"])
def test_malformed_ids_are_404(alice_client, bad_id):
    for name, response in every_request(alice_client, bad_id):
        assert_error(response, 404, "not_found")


def test_other_methods_are_405_with_allow(alice_client, alice):
    c = Conversation.objects.create(user=alice)
    r = alice_client.put(url(c.pk), "{}", content_type="application/json")
    assert_error(r, 405, "method_not_allowed")
    assert r["Allow"] == "DELETE, GET, PATCH"
    assert alice_client.delete(API).status_code == 405


# -- CSRF --------------------------------------------------------------------------------------


def test_unsafe_methods_need_the_csrf_token(alice, client):
    browser = Client(enforce_csrf_checks=True)
    browser.get("/accounts/login/")  # any page with a form sets the CSRF cookie, as the chat page does
    browser.force_login(alice)
    c = Conversation.objects.create(user=alice, title="keep")
    before = snapshot()
    assert_error(post(browser, API, {"title": "x"}), 403, "csrf_failed")
    assert_error(patch(browser, url(c.pk), {"title": "x"}), 403, "csrf_failed")
    assert_error(browser.delete(url(c.pk)), 403, "csrf_failed")
    assert snapshot() == before
    assert browser.get(API).status_code == 200  # reads need no token

    token = {"X-CSRFToken": browser.cookies["csrftoken"].value}
    assert post(browser, API, {"title": "x"}, headers=token).status_code == 201
    assert patch(browser, url(c.pk), {"title": "renamed"}, headers=token).status_code == 200
    assert browser.delete(url(c.pk), headers=token).status_code == 204


# -- with a real turn --------------------------------------------------------------------------


def test_a_turn_in_a_created_conversation_shows_in_its_detail(engine, client):
    # The sync test client runs the async views on this thread's connection: no thread's
    # connection outlives the test (which would keep PostgreSQL from dropping the test database).
    r = post(client, API, {"settings": {"temperature": 0.3}})
    assert r.status_code == 201
    conversation_id = r.json()["id"]
    r = post(client, "/chat", {"query": "hello there", "conversation_id": conversation_id})
    assert r.status_code == 200, r.content
    body = client.get(url(conversation_id)).json()
    assert body["title"] == "hello there" and body["generating"] is False
    assert [(m["role"], m["content"], m["finish_reason"]) for m in body["messages"]] == [
        ("user", "hello there", ""), ("assistant", "You said: hello there", "stop")]
    listed = client.get(API).json()["conversations"]
    assert [(c["id"], c["message_count"]) for c in listed] == [(conversation_id, 2)]
