"""The turn pipeline's own rules: one answer at a time per conversation, per-person limits
that concurrent requests cannot slip past, and history fitting."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from chat.engine import GenerationParams
from chat.errors import ChatError
from chat.models import Message
from chat.owners import Owner
from chat.turns import Protocol, TurnDone, TurnInput, fit_history, running_turns, start_turn

pytestmark = pytest.mark.django_db(transaction=True)


async def finish(turn):
    async for event in turn.events():
        if isinstance(event, TurnDone):
            return event


async def test_concurrent_turns_in_one_conversation_get_409(engine_env):
    engine_env(CHATGLM_FAKE_DELAY_MS="10")
    owner = Owner(visitor=uuid.uuid4())
    first = await start_turn(TurnInput(owner=owner, protocol=Protocol.WEBSOCKET, query="first"))
    await finish(first)
    attempts = await asyncio.gather(
        *(start_turn(TurnInput(owner=owner, protocol=Protocol.WEBSOCKET, query=f"again {i}",
                               conversation_id=uuid.UUID(first.conversation_id))) for i in range(4)),
        return_exceptions=True,
    )
    started = [t for t in attempts if not isinstance(t, BaseException)]
    refused = [e for e in attempts if isinstance(e, ChatError)]
    assert len(started) == 1 and len(refused) == 3 and all(e.status == 409 for e in refused)
    await finish(started[0])
    assert await Message.objects.filter(conversation_id=first.conversation_id).acount() == 4


async def test_per_person_limit_holds_under_concurrency(engine_env, settings):
    settings.CHATGLM = {**settings.CHATGLM, "MAX_RUNNING_PER_USER": 2}
    engine_env(CHATGLM_FAKE_DELAY_MS="10")
    owner = Owner(visitor=uuid.uuid4())
    attempts = await asyncio.gather(
        *(start_turn(TurnInput(owner=owner, protocol=Protocol.WEBSOCKET, query=f"q{i} " * 10)) for i in range(6)),
        return_exceptions=True,
    )
    started = [t for t in attempts if not isinstance(t, BaseException)]
    assert len(started) == 2 and running_turns(owner) == 2
    assert all(isinstance(e, ChatError) and e.status == 429 for e in attempts if e not in started)
    await asyncio.gather(*(finish(t) for t in started))
    assert running_turns(owner) == 0  # slots are given back when the turns end
    assert len([t async for t in _started(owner)]) == 1


async def _started(owner):
    """One more turn is admitted once the others ended."""
    turn = await start_turn(TurnInput(owner=owner, protocol=Protocol.WEBSOCKET, query="later"))
    await finish(turn)
    yield turn


def test_large_max_tokens_does_not_push_out_all_history(engine):
    history = [(f"question {i}", f"answer {i}") for i in range(4)]
    messages, truncated = fit_history(engine, "", history, "now", GenerationParams(max_new_tokens=engine.info.context_length))
    assert truncated == 0 and len(messages) == 9


# A pair costs 104 fake tokens, the query 3; a quarter of the context is kept for the answer.
@pytest.mark.parametrize("context,expected_kept", [(4096, 4), (400, 2), (300, 2), (200, 1), (120, 0)])
def test_fit_history_keeps_the_most_pairs_that_fit(engine_env, context, expected_kept):
    engine = engine_env(CHATGLM_FAKE_CONTEXT=str(context))
    history = [("x" * 100, "y" * 100)] * 4
    messages, truncated = fit_history(engine, "", history, "q", GenerationParams())
    assert truncated == 4 - expected_kept and len(messages) == 2 * expected_kept + 1


@pytest.mark.parametrize("pairs", [3, 5, 7, 8, 10])
def test_fit_history_keeps_every_pair_up_to_the_limit(engine_env, settings, pairs):
    """Fewer pairs than CHATGLM_MAX_HISTORY are all kept (a negative slice start once kept only
    the last limit-minus-length pairs: 3 of 5)."""
    settings.CHATGLM = {**settings.CHATGLM, "MAX_HISTORY": 8}
    engine = engine_env(CHATGLM_FAKE_CONTEXT="100000")
    history = [(f"q{i}", f"a{i}") for i in range(pairs)]
    messages, truncated = fit_history(engine, "", history, "now", GenerationParams(max_new_tokens=8))
    assert truncated == max(0, pairs - 8) and messages[0]["content"] == f"q{max(0, pairs - 8)}"


async def test_a_changed_system_prompt_is_what_the_record_and_the_next_turn_say(engine_env):
    """A turn records the system prompt as the conversation's first message; changing the
    conversation's prompt (the page's PATCH) changes that message too, not only the field."""
    from asgiref.sync import sync_to_async

    from chat import services
    from chat.models import Role

    engine_env()
    owner = Owner(visitor=uuid.uuid4())
    first = await start_turn(TurnInput(owner=owner, protocol=Protocol.WEBSOCKET, query="hi", system_prompt="Be brief."))
    await first.outcome()
    system = Message.objects.filter(conversation_id=first.conversation_id, role=Role.SYSTEM)
    assert [m.content async for m in system.all()] == ["Be brief."]
    await sync_to_async(services.update_conversation)(owner, uuid.UUID(first.conversation_id),
                                                      {"system_prompt": "Answer in French."})
    assert [m.content async for m in system.all()] == ["Answer in French."]
    second = await start_turn(TurnInput(owner=owner, protocol=Protocol.WEBSOCKET, query="again",
                                        conversation_id=uuid.UUID(first.conversation_id)))
    assert (await second.outcome()).result.finish_reason == "stop"
    assert await system.acount() == 1  # continued, not recorded again
