"""Conversations as trees: edit and regenerate make siblings, the model gets only the chosen
path, branch switching persists, exports follow, and migration 0003 both ways."""

from __future__ import annotations

import json
import uuid

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client

from chat import tree
from chat.errors import ChatError
from chat.models import Conversation, Message, Role
from chat.owners import Owner
from chat.turns import Protocol, TurnDone, TurnInput, start_turn

PROMPT = "[[fake:prompt]]"


async def run(**fields) -> TurnDone:
    turn = await start_turn(TurnInput(protocol=Protocol.WEBSOCKET, **fields))
    async for event in turn.events():
        if isinstance(event, TurnDone):
            return event


async def three_turns(owner):
    first = await run(owner=owner, query="one")
    cid = uuid.UUID(first.conversation_id)
    await run(owner=owner, query="two", conversation_id=cid)
    await run(owner=owner, query="three", conversation_id=cid)
    return cid


def path_of(cid):
    conversation = Conversation.objects.get(pk=cid)
    return [(m.role, m.content) for m in tree.current_path(conversation)]


@pytest.mark.django_db(transaction=True)
async def test_edit_makes_a_sibling_question_and_only_its_path_reaches_the_model(engine):
    owner = Owner(visitor=uuid.uuid4())
    cid = await three_turns(owner)
    q2 = await Message.objects.aget(conversation_id=cid, content="two")
    done = await run(owner=owner, query=f"TWO {PROMPT}", conversation_id=cid, parent_id=q2.parent_id, branch=True)
    # The model saw turn one and the edited question: not "two", its answer, nor turn three.
    assert done.result.text == f"Prompt: user: one | assistant: You said: one | user: TWO {PROMPT}"
    edited = await Message.objects.aget(conversation_id=cid, content=f"TWO {PROMPT}")
    assert edited.parent_id == q2.parent_id  # siblings
    path = await Conversation.objects.filter(pk=cid).afirst()
    assert [c for _, c in await sync(path_of)(cid)] == ["one", "You said: one", f"TWO {PROMPT}", done.result.text]
    # A plain follow-up continues the edited branch.
    follow = await run(owner=owner, query=PROMPT, conversation_id=cid)
    assert "three" not in follow.result.text and f"user: TWO {PROMPT}" in follow.result.text
    assert path is not None and await Message.objects.filter(conversation_id=cid).acount() == 10  # nothing lost


@pytest.mark.django_db(transaction=True)
async def test_regenerate_adds_a_sibling_answer_to_the_same_question(engine):
    owner = Owner(visitor=uuid.uuid4())
    first = await run(owner=owner, query="hello")
    cid = uuid.UUID(first.conversation_id)
    question = await Message.objects.aget(conversation_id=cid, role=Role.USER)
    again = await run(owner=owner, query="", conversation_id=cid, parent_id=question.pk, branch=True)
    assert again.result.text == "You said: hello"
    answers = [m async for m in Message.objects.filter(parent_id=question.pk).order_by("position")]
    assert len(answers) == 2 and answers[1].pk == again.message_id
    assert await Message.objects.filter(conversation_id=cid, role=Role.USER).acount() == 1  # no repeated question
    conversation = await Conversation.objects.aget(pk=cid)
    assert conversation.current_leaf_id == again.message_id


@pytest.mark.django_db(transaction=True)
async def test_bad_parents_are_refused_and_change_nothing(engine):
    owner = Owner(visitor=uuid.uuid4())
    first = await run(owner=owner, query="hello")
    cid = uuid.UUID(first.conversation_id)
    other = await run(owner=owner, query="elsewhere")
    before = await Message.objects.acount()
    with pytest.raises(ChatError) as foreign:
        await run(owner=owner, query="x", conversation_id=cid, parent_id=other.message_id, branch=True)
    assert foreign.value.status == 400 and foreign.value.param == "parent_id"
    question = await Message.objects.aget(conversation_id=cid, role=Role.USER)
    with pytest.raises(ChatError) as both:
        await run(owner=owner, query="x", conversation_id=cid, parent_id=question.pk, branch=True)
    assert both.value.param == "query"
    with pytest.raises(ChatError) as empty:
        await run(owner=owner, query="", conversation_id=cid, parent_id=first.message_id, branch=True)
    assert empty.value.param == "query"
    assert await Message.objects.acount() == before


def sync(fn):
    from asgiref.sync import sync_to_async

    return sync_to_async(fn)


# -- the API -----------------------------------------------------------------------------------


@pytest.fixture
def visitor_client(db):
    client = Client()
    assert client.post("/api/conversations", "{}", content_type="application/json").status_code == 201
    return client


def linear(conversation, *texts):
    for i, text in enumerate(texts):
        Message.objects.create(conversation=conversation, position=i, role=Role.USER if i % 2 == 0 else Role.ASSISTANT,
                               content=text, finish_reason="" if i % 2 == 0 else "stop")


@pytest.mark.django_db
def test_switch_branch_persists_and_api_exports_follow(alice):
    client = Client()
    client.force_login(alice)
    c = Conversation.objects.create(user=alice)
    linear(c, "q1", "a1", "q2", "a2", "q3", "a3")
    a1 = Message.objects.get(conversation=c, content="a1")
    q2 = Message.objects.get(conversation=c, content="q2")
    # An edited q2 (sibling) with its answer, as a turn writes them.
    edited = Message.objects.create(conversation=c, parent=a1, position=6, role=Role.USER, content="q2 edited")
    answer = Message.objects.create(conversation=c, parent=edited, position=7, role=Role.ASSISTANT, content="a2 new",
                                    finish_reason="stop")
    Conversation.objects.filter(pk=c.pk).update(current_leaf=answer)

    data = client.get(f"/api/conversations/{c.pk}").json()
    by_id = {m["id"]: m for m in data["messages"]}
    assert [by_id[i]["content"] for i in data["current_path"]] == ["q1", "a1", "q2 edited", "a2 new"]
    assert len(data["messages"]) == 8 and by_id[edited.pk]["parent_id"] == a1.pk

    r = client.post(f"/api/conversations/{c.pk}/switch", json.dumps({"message_id": q2.pk}), content_type="application/json")
    assert r.status_code == 200, r.content
    data = r.json()
    assert [by_id[i]["content"] for i in data["current_path"]] == ["q1", "a1", "q2", "a2", "q3", "a3"]
    assert client.get(f"/api/conversations/{c.pk}").json()["current_path"] == data["current_path"]  # stored

    md = client.get(f"/api/conversations/{c.pk}/export", {"format": "md"}).content.decode()
    assert "q3" in md and "q2 edited" not in md
    exported = json.loads(client.get(f"/api/conversations/{c.pk}/export", {"format": "json"}).content)
    assert len(exported["messages"]) == 8 and exported["current_leaf_id"] == data["current_leaf_id"]


@pytest.mark.django_db
def test_switch_refuses_bad_input_and_foreign_conversations(alice, bob):
    client = Client()
    client.force_login(alice)
    c = Conversation.objects.create(user=alice)
    linear(c, "q1", "a1")
    theirs = Conversation.objects.create(user=bob)
    linear(theirs, "x", "y")
    url = f"/api/conversations/{c.pk}/switch"
    for body, param in [({}, "message_id"), ({"message_id": "1"}, "message_id"), ({"message_id": 1, "x": 1}, "x"),
                        ({"message_id": theirs.messages.first().pk}, "message_id")]:
        r = client.post(url, json.dumps(body), content_type="application/json")
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.content)
    r = client.post(f"/api/conversations/{theirs.pk}/switch", json.dumps({"message_id": theirs.messages.first().pk}),
                    content_type="application/json")
    assert r.status_code == 404
    assert Conversation.objects.get(pk=c.pk).current_leaf_id == c.messages.last().pk


@pytest.mark.django_db(transaction=True)
def test_context_reports_tokens_and_truncation(alice, engine_env):
    engine_env(CHATGLM_MODEL="fake", CHATGLM_FAKE_CONTEXT="300")
    client = Client()
    client.force_login(alice)
    c = Conversation.objects.create(user=alice)
    linear(c, "x" * 100, "y" * 100)
    small = client.get(f"/api/conversations/{c.pk}/context").json()
    assert small["context_length"] == 300 and small["history_truncated"] == 0 and small["history_pairs"] == 1
    linear_more = ["x" * 100, "y" * 100] * 2
    for i, text in enumerate(linear_more):
        Message.objects.create(conversation=c, position=2 + i, role=Role.USER if i % 2 == 0 else Role.ASSISTANT,
                               content=text, finish_reason="" if i % 2 == 0 else "stop")
    big = client.get(f"/api/conversations/{c.pk}/context").json()
    assert big["prompt_tokens"] > small["prompt_tokens"] and big["history_pairs"] == 3
    assert big["history_truncated"] == 1 and big["sent_tokens"] < big["prompt_tokens"]


# -- migration 0003 ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_migration_links_existing_conversations_and_reverses():
    executor = MigrationExecutor(connection)
    executor.migrate([("chat", "0002_invite")])
    old = executor.loader.project_state([("chat", "0002_invite")]).apps
    OldConversation, OldMessage = old.get_model("chat", "Conversation"), old.get_model("chat", "Message")
    made = []
    for n in range(2):  # rows as today's code wrote them (no parents)
        c = OldConversation.objects.create(title=f"c{n}", system_prompt="sys" if n else "")
        texts = (["sys"] if n else []) + ["q1", "a1", "q2", "a2"]
        for i, text in enumerate(texts):
            role = "system" if text == "sys" else "user" if text.startswith("q") else "assistant"
            OldMessage.objects.create(conversation=c, position=i, role=role, content=text)
        made.append((c.pk, texts))
    rows_before = sorted(OldMessage.objects.values_list("id", "conversation_id", "position", "role", "content"))

    executor = MigrationExecutor(connection)
    executor.migrate([("chat", "0003_message_tree")])
    new = executor.loader.project_state([("chat", "0003_message_tree")]).apps
    Conversation_, Message_ = new.get_model("chat", "Conversation"), new.get_model("chat", "Message")
    for pk, texts in made:
        conversation = Conversation_.objects.get(pk=pk)
        messages = {m.pk: m for m in Message_.objects.filter(conversation_id=pk)}
        path = tree.path_to(messages, conversation.current_leaf_id)
        assert [m.content for m in path] == texts
    assert sorted(Message_.objects.values_list("id", "conversation_id", "position", "role", "content")) == rows_before

    executor = MigrationExecutor(connection)
    executor.migrate([("chat", "0002_invite")])
    assert sorted(OldMessage.objects.values_list("id", "conversation_id", "position", "role", "content")) == rows_before
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes("chat"))


@pytest.mark.django_db(transaction=True)
async def test_truncation_is_saved_with_the_answer(engine_env):
    engine_env(CHATGLM_MODEL="fake", CHATGLM_FAKE_CONTEXT="200")
    owner = Owner(visitor=uuid.uuid4())
    first = await run(owner=owner, query="x" * 100)
    cid = uuid.UUID(first.conversation_id)
    await run(owner=owner, query="y" * 100, conversation_id=cid)
    last = await run(owner=owner, query="z" * 100, conversation_id=cid)
    answers = [m.history_truncated async for m in Message.objects.filter(conversation_id=cid, role=Role.ASSISTANT).order_by("position")]
    assert answers[0] == 0 and answers[-1] >= 1
    assert (await Message.objects.aget(pk=last.message_id)).history_truncated == answers[-1]


@pytest.mark.django_db
def test_admin_shows_the_current_path_first_and_every_branch(admin_client, alice):
    c = Conversation.objects.create(user=alice, title="branched")
    linear(c, "q1", "a1")
    q1 = Message.objects.get(conversation=c, content="q1")
    edited = Message(conversation=c, position=2, role=Role.USER, content="q1 <b>edited</b>")
    edited.explicit_root = True
    edited.save()
    answer = Message.objects.create(conversation=c, parent=edited, position=3, role=Role.ASSISTANT, content="a1 new")
    Conversation.objects.filter(pk=c.pk).update(current_leaf=answer)
    page = admin_client.get(f"/admin/chat/conversation/{c.pk}/change/").content.decode()
    path = page[page.index("Current path:"):]
    assert path.index("q1 &lt;b&gt;edited&lt;/b&gt;") < path.index("a1 new")
    assert "<b>edited" not in page  # escaped
    assert "#%d User: q1<" % q1.pk not in path.split("</ol>")[0]  # the other branch is not on the path
    assert page.count("a1 new") >= 2 and "a1" in page  # every branch is listed below
