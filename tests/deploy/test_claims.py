"""The running-answer claims on Redis (chat/claims.py), as several processes see them."""

from __future__ import annotations

import uuid

import pytest

from chat import claims
from chat.claims import BUSY, LIMIT, OK, SharedClaims
from chat.owners import Owner

pytestmark = pytest.mark.redis


@pytest.fixture
def two_processes(redis_url):
    """Two independent claim clients: what two workers hold."""
    return SharedClaims(redis_url), SharedClaims(redis_url)


def test_the_limit_and_the_conversation_hold_across_clients(two_processes):
    a, b = two_processes
    owner = Owner(visitor=uuid.uuid4())
    conversation = str(uuid.uuid4())
    verdict, token = a.acquire(owner, conversation, limit=2)
    assert verdict == OK and token
    assert b.acquire(owner, conversation, limit=2) == (BUSY, "")  # one answer per conversation
    verdict, second = b.acquire(owner, None, limit=2)
    assert verdict == OK
    assert a.acquire(owner, None, limit=2) == (LIMIT, "")  # two running, on two "processes"
    assert b.acquire(Owner(visitor=uuid.uuid4()), None, limit=2)[0] == OK  # someone else is not limited
    a.release(token)
    assert b.acquire(owner, conversation, limit=2)[0] == OK  # freed for every process at once
    b.release(second)


def test_a_dead_process_frees_its_claims_when_its_lease_ends(two_processes, monkeypatch):
    a, b = two_processes
    monkeypatch.setattr(claims, "LEASE_SECONDS", 1)
    owner = Owner(user_id=10_000_000 + uuid.uuid4().int % 1_000_000)
    conversation = str(uuid.uuid4())
    assert a.acquire(owner, conversation, limit=1)[0] == OK
    a.held.clear()  # the process died: nobody renews or releases its claim
    assert b.acquire(owner, conversation, limit=1) == (BUSY, "")
    import time

    time.sleep(1.2)
    verdict, token = b.acquire(owner, conversation, limit=1)
    assert verdict == OK
    b.release(token)


def test_a_new_conversation_is_held_once_known(two_processes):
    a, b = two_processes
    owner = Owner(api_key="ci")
    verdict, token = a.acquire(owner, None, limit=0)
    conversation = str(uuid.uuid4())
    a.hold(token, conversation)
    assert b.acquire(owner, conversation, limit=0) == (BUSY, "")
    a.release(token)
    assert b.acquire(owner, conversation, limit=0)[0] == OK
