"""manage.py purge_conversations: deletes conversations idle for N days, with their messages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from chat.models import Conversation, Message, Role

pytestmark = pytest.mark.django_db


def purge(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("purge_conversations", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def aged():
    """Conversations last updated 1, 10 and 100 days ago, two messages each."""
    now = timezone.now()
    rows = {}
    for days in (1, 10, 100):
        c = Conversation.objects.create(title=f"{days} days")
        Message.objects.create(conversation=c, position=0, role=Role.USER, content="q")
        Message.objects.create(conversation=c, position=1, role=Role.ASSISTANT, content="a", finish_reason="stop")
        Conversation.objects.filter(pk=c.pk).update(updated_at=now - timedelta(days=days))
        rows[days] = c
    return rows


def remaining() -> set[str]:
    return set(Conversation.objects.values_list("title", flat=True))


def test_deletes_conversations_idle_longer_than_days(aged):
    out = purge("--days", "7")
    assert "Deleted 2 conversation(s) and 4 message(s)" in out
    assert remaining() == {"1 days"}
    assert Message.objects.count() == 2
    assert "Deleted 0 conversation(s)" in purge("--days", "7")


def test_dry_run_deletes_nothing(aged):
    out = purge("--days", "30", "--dry-run")
    assert "Would delete 1 conversation(s) and 2 message(s)" in out
    assert remaining() == {"1 days", "10 days", "100 days"}
    assert Message.objects.count() == 6


def test_default_is_the_retention_setting(aged, settings):
    settings.CHATGLM = {**settings.CHATGLM, "RETENTION_DAYS": 30}
    assert "Deleted 1 conversation(s)" in purge()
    assert remaining() == {"1 days", "10 days"}


def test_refuses_without_a_retention_period(aged, settings):
    settings.CHATGLM = {**settings.CHATGLM, "RETENTION_DAYS": 0}
    with pytest.raises(CommandError, match="CHATGLM_RETENTION_DAYS"):
        purge()
    with pytest.raises(CommandError, match="at least 1"):
        purge("--days", "0")
    assert len(remaining()) == 3


def test_deletes_in_batches(settings, monkeypatch):
    from chat import services

    monkeypatch.setattr(services, "PURGE_BATCH", 3)
    old = timezone.now() - timedelta(days=50)
    Conversation.objects.bulk_create([Conversation(title=f"c{i}") for i in range(8)])
    Conversation.objects.update(updated_at=old)
    fresh = Conversation.objects.create(title="fresh")
    assert "Deleted 8 conversation(s)" in purge("--days", "7")
    assert list(Conversation.objects.values_list("pk", flat=True)) == [fresh.pk]


def test_runs_as_a_cron_command(tmp_path, settings):
    """Exit status 1 with a reason on stderr when refusing; a subprocess like cron runs it."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CHATGLM_DATA_DIR": str(tmp_path), "CHATGLM_RETENTION_DAYS": "0"}
    env.pop("DATABASE_URL", None)  # its own throwaway SQLite file, whatever the suite runs on
    manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
    options = {"env": env, "cwd": tmp_path, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run([*manage, "migrate", "-v", "0"], check=True, **options)
    refused = subprocess.run([*manage, "purge_conversations"], **options)
    assert refused.returncode == 1 and "CHATGLM_RETENTION_DAYS" in refused.stderr
    done = subprocess.run([*manage, "purge_conversations", "--days", "3"], **options)
    assert done.returncode == 0 and "Deleted 0 conversation(s)" in done.stdout
