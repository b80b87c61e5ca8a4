"""Search over titles and message text: through the index, owner-scoped, with highlights."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client

from chat import search
from chat.models import Conversation, Message, Role
from chat.owners import Owner

pytestmark = pytest.mark.django_db


def talk(user, title, *texts):
    c = Conversation.objects.create(user=user, title=title)
    for i, text in enumerate(texts):
        Message.objects.create(conversation=c, position=i, role=Role.USER if i % 2 == 0 else Role.ASSISTANT, content=text)
    return c


def test_finds_words_inside_answers_and_titles_of_the_owner_only(alice, bob):
    mine = talk(alice, "Fruit", "what is a kiwi?", "A kiwi is a furry brown fruit from New Zealand.")
    titled = talk(alice, "Zealand trip", "plans", "none yet")
    talk(bob, "Bob's", "zealand", "Zealand too")
    hits = search.search(Owner(user_id=alice.pk), "zealand")
    assert [h.conversation.pk for h in hits] == [titled.pk, mine.pk]
    answer = Message.objects.get(conversation=mine, role=Role.ASSISTANT)
    assert hits[1].message_id == answer.pk and hits[1].role == "assistant"
    start, end = hits[1].highlight
    assert hits[1].snippet[start:end] == "Zealand"
    assert hits[0].message_id is None  # only its title matched


def test_index_follows_edits_and_deletes_and_chinese_text(alice):
    c = talk(alice, "", "你好世界，今天天气很好", "ok")
    owner = Owner(user_id=alice.pk)
    assert [h.conversation.pk for h in search.search(owner, "今天天气")] == [c.pk]
    Message.objects.filter(conversation=c, role=Role.USER).update(content="nothing here")
    assert search.search(owner, "今天天气") == []
    assert [h.conversation.pk for h in search.search(owner, "here")] == [c.pk]
    c.delete()
    assert search.search(owner, "here") == []


@pytest.mark.skipif(connection.vendor != "sqlite", reason="the SQLite index")
def test_sqlite_queries_go_through_the_fts_index(alice):
    talk(alice, "", "needle in a haystack", "ok")
    sql = str(search._matching_messages("needle").query)
    assert "chat_message_fts MATCH" in sql
    assert "MATCH" not in str(search._matching_messages("ne").query)  # under 3 characters: a scan
    assert search.search(Owner(user_id=alice.pk), 'say "needle')  == []  # quotes are text, not syntax


def test_search_api(alice):
    client = Client()
    client.force_login(alice)
    c = talk(alice, "t", "q", "the answer mentions pomegranates")
    r = client.get("/api/search", {"q": "pomegranate"})
    assert r.status_code == 200
    [result] = r.json()["results"]
    assert result["id"] == str(c.pk) and result["role"] == "assistant"
    start, end = result["highlight"]
    assert result["snippet"][start:end] == "pomegranate"
    assert client.get("/api/search").json()["error"]["param"] == "q"
    assert client.get("/api/search", {"q": "x" * 201}).status_code == 400
    assert Client().get("/api/search", {"q": "pomegranate"}).json()["results"] == []  # another visitor


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs DATABASE_URL on PostgreSQL")
def test_postgres_full_text_index_and_prefix_words(alice):
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'chat_message_content_fts'")
        assert "gin" in cursor.fetchone()[0].lower()
    c = talk(alice, "", "q", "Rivers and mountains of New Zealand")
    owner = Owner(user_id=alice.pk)
    assert "to_tsvector" in str(search._matching_messages("mountain river").query)
    assert [h.conversation.pk for h in search.search(owner, "mountain river")] == [c.pk]  # words, any order
    assert search.search(owner, "it's 'quoted' & | !") == []  # no tsquery syntax from users
