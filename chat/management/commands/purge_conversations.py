"""Delete conversations nobody has touched for N days (their messages go with them).

    python manage.py purge_conversations              # N = CHATGLM_RETENTION_DAYS
    python manage.py purge_conversations --days 30 --dry-run

Meant for cron: silent about nothing but the count, exit status 1 with a reason when it
refuses (no retention configured and no --days), deletes in small batches so that a big
purge never holds the database's write lock for long.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from chat import services
from chat.models import Message


class Command(BaseCommand):
    help = "Delete conversations (and their messages) not updated for --days days (default: CHATGLM_RETENTION_DAYS)."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=None,
                            help="keep conversations updated within this many days (at least 1)")
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")

    def handle(self, *args, days=None, dry_run=False, **options):
        if days is None:
            days = settings.CHATGLM.get("RETENTION_DAYS") or 0
            if days <= 0:
                raise CommandError(
                    "No retention period: CHATGLM_RETENTION_DAYS is unset or 0, which keeps conversations "
                    "forever. Set it, or pass --days N."
                )
        elif days < 1:
            raise CommandError("--days must be at least 1.")

        cutoff = timezone.now() - timedelta(days=days)
        expired = services.expired_conversations(cutoff)
        if dry_run:
            conversations = expired.count()
            messages = Message.objects.filter(conversation__in=expired).count()
            self.stdout.write(f"Would delete {conversations} conversation(s) and {messages} message(s) "
                              f"not updated since {cutoff:%Y-%m-%d %H:%M} UTC (dry run).")
            return

        conversations, messages = services.purge_conversations(cutoff)
        self.stdout.write(f"Deleted {conversations} conversation(s) and {messages} message(s) "
                          f"not updated since {cutoff:%Y-%m-%d %H:%M} UTC.")
