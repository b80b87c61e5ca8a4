"""Many turns writing at once: no `database is locked`, no lost or misnumbered message.

On SQLite the check needs a real file configured exactly as settings.py does (the test
database is in memory), so a child process runs it against a fresh file database. On any
other database (PostgreSQL in CI), the same workload runs in threads on the test database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid

import pytest
from django.db import connection, connections

THREADS = 8
TURNS = 25


def hammer(threads: int = THREADS, turns: int = TURNS) -> dict:
    """`threads` owners at once, each `turns` read-then-write turns through chat.turns' persistence,
    with renames and list reads in between; returns the failures and what was stored."""
    from chat import selectors, services
    from chat.engine import GenerationResult
    from chat.models import Conversation, Message
    from chat.owners import Owner
    from chat.turns import Protocol, TurnInput

    # The sync functions that turns call through sync_to_async: each thread is one concurrent request.
    saved_history, save_question, save_answer = selectors.turn_history, services.save_question, services.save_answer
    start = threading.Barrier(threads)
    failures: list[str] = []
    conversation_ids: list[str] = []

    def worker(n: int) -> None:
        owner = Owner(visitor=uuid.uuid4())
        conversation, history = None, []
        try:
            start.wait()
            for i in range(turns):
                try:
                    inp = TurnInput(owner=owner, protocol=Protocol.WEBSOCKET, query=f"question {n}-{i}",
                                    conversation_id=conversation.id if conversation else None)
                    if conversation is not None:
                        conversation, history, inp = saved_history(inp)
                    conversation_id, _, answer_id = save_question(inp, conversation, history, "", "fake")
                    save_answer(answer_id, GenerationResult(text=f"answer {n}-{i}", finish_reason="stop",
                                                            completion_tokens=2, duration=0.01))
                    if conversation is None:
                        conversation = Conversation.objects.get(pk=conversation_id)
                        conversation_ids.append(conversation_id)
                    if i % 5 == 4:
                        services.update_conversation(owner, conversation.id,
                                                     {"title": f"renamed {n}-{i}", "settings": {"temperature": 0.5}})
                    selectors.conversation_page(owner)
                except Exception as exc:  # noqa: BLE001 - counted, reported
                    failures.append(f"thread {n} turn {i}: {type(exc).__name__}: {exc}")
        finally:
            connections.close_all()

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()

    positions = {
        str(c): list(Message.objects.filter(conversation_id=c).order_by("position").values_list("position", flat=True))
        for c in conversation_ids
    }
    return {
        "vendor": connection.vendor,
        "options": connection.settings_dict.get("OPTIONS", {}),
        "journal_mode": _journal_mode(),
        "failures": failures,
        "conversations": len(conversation_ids),
        "contiguous": all(p == list(range(2 * turns)) for p in positions.values()),
        "messages": Message.objects.filter(conversation_id__in=conversation_ids).count(),
        "titles": sorted(Conversation.objects.filter(pk__in=conversation_ids).values_list("title", flat=True)),
    }


def _journal_mode() -> str | None:
    if connection.vendor != "sqlite":
        return None
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        return cursor.fetchone()[0]


def assert_no_losses(stats: dict) -> None:
    assert stats["failures"] == [], stats["failures"][:5]
    assert stats["conversations"] == THREADS
    assert stats["messages"] == THREADS * TURNS * 2
    assert stats["contiguous"]
    assert stats["titles"] == sorted(f"renamed {n}-{TURNS - 1}" for n in range(THREADS))


CHILD = """
import json, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from tests.test_concurrency import hammer
print("STATS " + json.dumps(hammer(), default=str))
"""


def test_concurrent_turns_on_a_sqlite_file_as_configured(tmp_path, settings):
    env = {**os.environ, "CHATGLM_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "chatglm_site.settings"}
    env.pop("DATABASE_URL", None)  # settings.py's own SQLite file configuration, whatever the suite runs on
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=settings.BASE_DIR, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads(done.stdout.rsplit("STATS ", 1)[1])
    assert stats["vendor"] == "sqlite"
    assert stats["options"]["transaction_mode"] == "IMMEDIATE" and stats["journal_mode"] == "wal"
    assert_no_losses(stats)


@pytest.mark.django_db(transaction=True)
def test_concurrent_turns_on_the_test_database():
    if connection.vendor == "sqlite":
        pytest.skip("the in-memory SQLite test database is covered by the file test above")
    assert_no_losses(hammer())
