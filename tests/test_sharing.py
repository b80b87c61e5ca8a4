"""Share links: a snapshot of the current path, read-only, unguessable, revocable, noindex,
no session; only the owner creates, lists or revokes them."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from chat.models import Conversation, Message, Role, Share

pytestmark = pytest.mark.django_db


@pytest.fixture
def owned(alice):
    client = Client()
    client.force_login(alice)
    c = Conversation.objects.create(user=alice, title="Kiwis", system_prompt="secret instructions")
    for i, text in enumerate(["what is a kiwi?", "A **fruit**. <script>alert(1)</script>"]):
        Message.objects.create(conversation=c, position=i, role=Role.USER if i == 0 else Role.ASSISTANT, content=text)
    return client, c


def test_create_view_and_revoke(owned):
    client, c = owned
    r = client.post(f"/api/conversations/{c.pk}/shares", "{}", content_type="application/json")
    assert r.status_code == 201, r.content
    share = r.json()
    assert len(share["id"]) >= 32 and share["url"] == f"/s/{share['id']}" and share["message_count"] == 2

    # Later turns do not change the snapshot.
    Message.objects.create(conversation=c, position=2, role=Role.USER, content="later question")
    public = Client()
    page = public.get(share["url"])
    assert page.status_code == 200
    assert page["X-Robots-Tag"].startswith("noindex") and b'name="robots" content="noindex' in page.content
    assert not page.cookies  # no session, no CSRF cookie
    data = json.loads(page.content.decode().split('id="share-data" type="application/json">')[1].split("</script>")[0])
    assert [m["content"] for m in data["messages"]] == ["what is a kiwi?", "A **fruit**. <script>alert(1)</script>"]
    assert b"secret instructions" not in page.content and b"later question" not in page.content
    assert b"<script>alert(1)" not in page.content  # json_script escapes it: data, never markup
    assert b'id="prompt"' not in page.content and b"conversation-list" not in page.content

    assert [s["id"] for s in client.get(f"/api/conversations/{c.pk}/shares").json()["shares"]] == [share["id"]]
    assert client.delete(f"/api/shares/{share['id']}").status_code == 204
    assert public.get(share["url"]).status_code == 404
    assert client.delete(f"/api/shares/{share['id']}").status_code == 404


def test_only_the_owner_shares_or_revokes(owned, bob):
    client, c = owned
    share = client.post(f"/api/conversations/{c.pk}/shares", "{}", content_type="application/json").json()
    other = Client()
    other.force_login(bob)
    assert other.post(f"/api/conversations/{c.pk}/shares", "{}", content_type="application/json").status_code == 404
    assert other.get(f"/api/conversations/{c.pk}/shares").status_code == 404
    assert other.delete(f"/api/shares/{share['id']}").status_code == 404
    assert Client().get(share["url"]).status_code == 200  # still there
    assert Client().get("/s/not-a-real-id").status_code == 404
    # Reading a shared page writes nothing: it is not a way in.
    assert Share.objects.count() == 1


def test_empty_conversation_cannot_be_shared(alice):
    client = Client()
    client.force_login(alice)
    c = Conversation.objects.create(user=alice)
    r = client.post(f"/api/conversations/{c.pk}/shares", "{}", content_type="application/json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "empty_conversation"
