"""The admin as a superuser through the test client: list, search, filters, change view, export."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from chat.models import Conversation, Message, Role

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/chat/conversation/"


@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "root-pass-123"))
    return client


@pytest.fixture
def rows(admin_client):
    alice = User.objects.create_user("alice")
    rows = {
        "user": Conversation.objects.create(user=alice, title="Alice plans a trip", model="glm-4", source="web"),
        "anonymous": Conversation.objects.create(visitor=uuid.uuid4(), title="Visitor asks", model="smol"),
        "api_key": Conversation.objects.create(api_key_name="ci", title="Key job", model="glm-4", source="openai"),
        "none": Conversation.objects.create(title="Open API call", model="smol", source="api"),
    }
    for i, c in enumerate(rows.values()):
        Message.objects.create(conversation=c, position=0, role=Role.USER, content=f"question {i} about kiwis" if i == 1 else f"question {i}")
        Message.objects.create(conversation=c, position=1, role=Role.ASSISTANT, content=f"answer {i}",
                               finish_reason="stop", prompt_tokens=10 + i, completion_tokens=20 + i)
    old = rows["none"]
    Conversation.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=400))
    return rows


def listed_titles(response) -> set[str]:
    assert response.status_code == 200, response.content[:500]
    return {c.title for c in response.context["cl"].result_list}


def test_changelist_shows_owner_counts_and_tokens(admin_client, rows):
    r = admin_client.get(CHANGELIST)
    assert listed_titles(r) == {c.title for c in rows.values()}
    by_title = {c.title: c for c in r.context["cl"].result_list}
    alice = by_title["Alice plans a trip"]
    assert (alice.message_count, alice.prompt_tokens, alice.completion_tokens) == (2, 10, 20)
    assert alice.last_message_at is not None
    html = r.content.decode()
    assert "user:alice" in html and "key:ci" in html and "visitor:" in html


def test_changelist_makes_a_constant_number_of_queries(admin_client, rows, django_assert_max_num_queries):
    admin_client.get(CHANGELIST)  # warm up (session, content types)
    with django_assert_max_num_queries(12) as few:
        admin_client.get(CHANGELIST)
    for i in range(20):
        c = Conversation.objects.create(user=User.objects.create_user(f"user{i}"), title=f"more {i}")
        Message.objects.create(conversation=c, position=0, role=Role.USER, content="q")
    with django_assert_max_num_queries(len(few.captured_queries)):
        r = admin_client.get(CHANGELIST)
    assert len(r.context["cl"].result_list) == 24


def test_search_by_title_and_message_content(admin_client, rows):
    assert listed_titles(admin_client.get(CHANGELIST, {"q": "trip"})) == {"Alice plans a trip"}
    # Titles only by default: message text is searched (every row read) only when asked for.
    assert listed_titles(admin_client.get(CHANGELIST, {"q": "kiwis"})) == set()
    # A match in message content finds the conversation once, with its counts intact.
    r = admin_client.get(CHANGELIST, {"q": "kiwis", "search_in": "messages"})
    assert listed_titles(r) == {"Visitor asks"}
    (row,) = r.context["cl"].result_list
    assert row.message_count == 2
    everything = admin_client.get(CHANGELIST, {"q": "answer", "search_in": "messages"})
    assert listed_titles(everything) == {c.title for c in rows.values()}


@pytest.mark.parametrize("kind", ["user", "anonymous", "api_key", "none"])
def test_owner_kind_filter(admin_client, rows, kind):
    assert listed_titles(admin_client.get(CHANGELIST, {"owner": kind})) == {rows[kind].title}


def test_source_model_and_date_filters(admin_client, rows):
    assert listed_titles(admin_client.get(CHANGELIST, {"source": "openai"})) == {"Key job"}
    assert listed_titles(admin_client.get(CHANGELIST, {"model": "glm-4"})) == {"Alice plans a trip", "Key job"}
    week_ago = (timezone.now() - timedelta(days=7)).strftime("%Y-%m-%d 00:00:00+00:00")
    recent = admin_client.get(CHANGELIST, {"created_at__gte": week_ago})
    assert listed_titles(recent) == {"Alice plans a trip", "Visitor asks", "Key job"}
    this_year = timezone.now().year
    assert "Open API call" not in listed_titles(admin_client.get(CHANGELIST, {"created_at__year": this_year}))


def test_change_view_shows_messages_read_only(admin_client, rows):
    c = rows["user"]
    r = admin_client.get(f"{CHANGELIST}{c.pk}/change/")
    assert r.status_code == 200
    html = r.content.decode()
    assert "question 0" in html and "answer 0" in html
    (inline,) = r.context["inline_admin_formsets"]
    assert not inline.has_add_permission and not inline.has_delete_permission and not inline.has_change_permission
    assert not inline.formset.can_delete
    assert 'name="messages-0-content"' not in html  # shown, not editable


def test_admin_can_rename_but_messages_stay(admin_client, rows):
    c = rows["user"]
    r = admin_client.post(f"{CHANGELIST}{c.pk}/change/", {
        "title": "Renamed by admin", "system_prompt": "", "settings": "{}",
        "messages-TOTAL_FORMS": "2", "messages-INITIAL_FORMS": "2", "messages-MIN_NUM_FORMS": "0",
        "messages-MAX_NUM_FORMS": "1000",
    })
    assert r.status_code == 302, r.content[:2000]
    c.refresh_from_db()
    assert c.title == "Renamed by admin" and c.messages.count() == 2


def test_deleting_a_conversation_in_the_admin_deletes_its_messages(admin_client, rows):
    c = rows["user"]
    r = admin_client.post(f"{CHANGELIST}{c.pk}/delete/", {"post": "yes"})
    assert r.status_code == 302
    assert not Conversation.objects.filter(pk=c.pk).exists()
    assert not Message.objects.filter(conversation_id=c.pk).exists()
    assert Message.objects.count() == 6


def test_export_action_downloads_json(admin_client, rows):
    chosen = [rows["user"], rows["anonymous"]]
    r = admin_client.post(CHANGELIST, {"action": "export_as_json", "_selected_action": [str(c.pk) for c in chosen]})
    assert r.status_code == 200
    assert r["Content-Type"].startswith("application/json")
    assert r["Content-Disposition"].startswith('attachment; filename="conversations-')
    data = json.loads(r.content)
    exported = {c["id"]: c for c in data["conversations"]}
    assert set(exported) == {str(c.pk) for c in chosen}
    alice = exported[str(rows["user"].pk)]
    assert alice["owner"] == "user:alice"
    assert [m["content"] for m in alice["messages"]] == ["question 0", "answer 0"]


def test_message_admin_is_read_only(admin_client, rows):
    r = admin_client.get("/admin/chat/message/", {"q": "kiwis"})
    assert r.status_code == 200
    assert [m.content for m in r.context["cl"].result_list] == ["question 1 about kiwis"]
    message = Message.objects.first()
    r = admin_client.get(f"/admin/chat/message/{message.pk}/change/")
    assert r.status_code == 200 and not r.context["has_change_permission"]
    assert admin_client.get("/admin/chat/message/add/").status_code == 403
    assert admin_client.post(f"/admin/chat/message/{message.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Message.objects.filter(pk=message.pk).exists()


def test_non_staff_cannot_open_the_admin(client):
    client.force_login(User.objects.create_user("plain"))
    assert client.get(CHANGELIST).status_code == 302


def test_a_message_text_search_past_its_time_budget_is_stopped(admin_client, rows, settings):
    settings.CHATGLM = {**settings.CHATGLM, "ADMIN_SEARCH_SECONDS": 0.0}  # any scan is too long
    Message.objects.bulk_create(Message(conversation=rows["user"], position=10 + i, role=Role.USER, content=f"more {i}")
                                for i in range(20_000))  # a scan PostgreSQL cannot finish in 1 ms
    r = admin_client.get(CHANGELIST, {"q": "kiwis", "search_in": "messages"}, follow=True)
    assert r.status_code == 200 and "was stopped" in r.content.decode()
    assert listed_titles(admin_client.get(CHANGELIST, {"q": "trip"})) == {"Alice plans a trip"}  # titles: no budget
    r = admin_client.get("/admin/chat/message/", {"q": "kiwis"}, follow=True)  # the message list too
    assert r.status_code == 200 and "was stopped" in r.content.decode()
