"""Conversation and Message: ownership queries, adoption at login, cascades, ordering, constraints."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from chat.models import Conversation, FinishReason, Message, Role
from chat.owners import VISITOR_SESSION_KEY, Owner
from chat.selectors import history_of
from chat.services import mark_interrupted_answers

pytestmark = pytest.mark.django_db


def conversation(**fields) -> Conversation:
    return Conversation.objects.create(**fields)


def test_owned_by_isolates_every_kind_of_owner(alice, bob):
    v1, v2 = uuid.uuid4(), uuid.uuid4()
    mine = conversation(user=alice, title="alice")
    theirs = conversation(user=bob, title="bob")
    anon1 = conversation(visitor=v1)
    anon2 = conversation(visitor=v2)
    keyed = conversation(api_key_name="ci", source="openai")
    keyless = conversation(source="api")

    def ids(owner):
        return set(Conversation.objects.owned_by(owner).values_list("pk", flat=True))

    assert ids(Owner(user_id=alice.pk)) == {mine.pk}
    assert ids(Owner(user_id=bob.pk)) == {theirs.pk}
    assert ids(Owner(visitor=v1)) == {anon1.pk}
    assert ids(Owner(visitor=v2)) == {anon2.pk}
    assert ids(Owner(api_key="ci")) == {keyed.pk}
    assert ids(Owner(open_api=True)) == {keyless.pk}
    assert ids(Owner()) == set()
    assert ids(Owner(visitor=uuid.uuid4())) == set()


def test_adopt_moves_only_that_visitors_conversations(alice):
    visitor, other = uuid.uuid4(), uuid.uuid4()
    a, b = conversation(visitor=visitor), conversation(visitor=visitor)
    c = conversation(visitor=other)
    assert Conversation.objects.adopt(visitor, alice) == 2
    for row in (a, b):
        row.refresh_from_db()
        assert (row.user_id, row.visitor) == (alice.pk, None)
    c.refresh_from_db()
    assert (c.user_id, c.visitor) == (None, other)


def test_login_view_adopts_the_sessions_conversations(client, alice):
    """Through the real login view: the session key rotates, the visitor UUID travels in the data."""
    r = client.post("/api/conversations", {"title": "before login"}, content_type="application/json")
    assert r.status_code == 201
    conversation_id = r.json()["id"]
    old_key = client.session.session_key
    visitor = client.session[VISITOR_SESSION_KEY]
    assert Conversation.objects.get(pk=conversation_id).visitor == uuid.UUID(visitor)

    r = client.post("/accounts/login/", {"username": "alice", "password": "pw-alice-123"})
    assert r.status_code == 302
    assert client.session.session_key != old_key
    assert VISITOR_SESSION_KEY not in client.session
    row = Conversation.objects.get(pk=conversation_id)
    assert (row.user_id, row.visitor) == (alice.pk, None)


def test_deleting_a_conversation_deletes_its_messages(alice):
    c = conversation(user=alice)
    Message.objects.create(conversation=c, position=0, role=Role.USER, content="q")
    Message.objects.create(conversation=c, position=1, role=Role.ASSISTANT, content="a", finish_reason="stop")
    other = conversation(user=alice)
    Message.objects.create(conversation=other, position=0, role=Role.USER, content="kept")
    c.delete()
    assert not Message.objects.filter(conversation_id=c.pk).exists()
    assert Message.objects.filter(conversation=other).count() == 1


def test_deleting_a_user_deletes_their_conversations(alice, bob):
    conversation(user=alice)
    kept = conversation(user=bob)
    alice.delete()
    assert list(Conversation.objects.values_list("pk", flat=True)) == [kept.pk]


def test_conversations_newest_activity_first_and_messages_by_position(alice):
    old, new = conversation(user=alice, title="old"), conversation(user=alice, title="new")
    Conversation.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(days=1))
    assert [c.title for c in Conversation.objects.owned_by(Owner(user_id=alice.pk))] == ["new", "old"]
    for position in (2, 0, 1):
        Message.objects.create(conversation=new, position=position, role=Role.USER, content=str(position))
    assert [m.content for m in new.messages.all()] == ["0", "1", "2"]


def test_a_conversation_has_one_owner_at_most(alice):
    with pytest.raises(IntegrityError), transaction.atomic():
        conversation(user=alice, visitor=uuid.uuid4())


def test_message_positions_are_unique_per_conversation(alice):
    c, d = conversation(user=alice), conversation(user=alice)
    Message.objects.create(conversation=c, position=0, role=Role.USER)
    Message.objects.create(conversation=d, position=0, role=Role.USER)  # another conversation: fine
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(conversation=c, position=0, role=Role.ASSISTANT)


def test_history_of_pairs_answered_questions(alice):
    c = conversation(user=alice)
    rows = [(Role.SYSTEM, "be brief", "stop"), (Role.USER, "q1", ""), (Role.ASSISTANT, "a1", "stop"),
            (Role.USER, "q2", ""), (Role.ASSISTANT, "", "error"), (Role.USER, "q3", "")]
    for position, (role, content, finish) in enumerate(rows):
        Message.objects.create(conversation=c, position=position, role=role, content=content, finish_reason=finish)
    assert history_of(c) == [("q1", "a1")]


def test_mark_interrupted_answers_marks_only_generating_answers(alice):
    c = conversation(user=alice)
    question = Message.objects.create(conversation=c, position=0, role=Role.USER, content="q")
    done = Message.objects.create(conversation=c, position=1, role=Role.ASSISTANT, content="a", finish_reason="stop")
    Message.objects.create(conversation=c, position=2, role=Role.USER, content="q2")
    stuck = Message.objects.create(conversation=c, position=3, role=Role.ASSISTANT, content="half")
    assert stuck.finish_reason == FinishReason.GENERATING

    assert mark_interrupted_answers() == 1
    stuck.refresh_from_db()
    assert stuck.finish_reason == FinishReason.ERROR and "stopped" in stuck.error
    assert stuck.content == "half"  # what was produced is kept
    done.refresh_from_db()
    question.refresh_from_db()
    assert (done.finish_reason, done.error) == ("stop", "")
    assert question.finish_reason == ""  # questions are never "generating"
    assert mark_interrupted_answers() == 0


def test_tokens_per_second_excludes_time_to_first_token(alice):
    c = conversation(user=alice)
    m = Message(conversation=c, position=0, role=Role.ASSISTANT, completion_tokens=20, duration=3.0,
                time_to_first_token=1.0)
    assert m.tokens_per_second == 10.0
    assert Message(conversation=c, position=1, role=Role.ASSISTANT).tokens_per_second is None
