"""Search over message text for one user with many conversations: the index vs a scan.

Builds a throwaway SQLite database (WAL, as configured) with one user owning `--conversations`
conversations of `--messages` messages each (default 10,000 x 50 = 500,000 messages, about
70 characters each, random words), then times `chat.search.search()` for a few queries through
the FTS5 trigram index of migration 0004 and, side by side in the same run, through the
portable LIKE scan the code falls back to. Median of `--repeats` runs. Prints a table and
writes JSON under bench/results/. Run alone; do not compare figures across machines or runs.

    .venv/bin/python bench/bench_search.py [--conversations 10000 --messages 50 --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_info, describe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

WORDS = ("the model answer question token context branch search share water river mountain tea "
         "coffee garden window paper light music number story summer winter city road bridge").split()


def build(args, rng) -> tuple[int, float]:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    user = get_user_model().objects.create_user("bench")
    started = time.perf_counter()
    now = "2026-01-01 00:00:00"
    with transaction.atomic(), connection.cursor() as cursor:
        for c in range(args.conversations):
            cid = uuid.uuid4().hex
            cursor.execute(
                "INSERT INTO chat_conversation (id, user_id, api_key_name, title, source, model, system_prompt,"
                " settings, created_at, updated_at) VALUES (%s, %s, '', %s, 'web', 'fake', '', '{}', %s, %s)",
                [cid, user.pk, f"conversation {c}", now, f"2026-01-01 00:{c // 600 % 60:02d}:{c % 60:02d}"],
            )
            rows = []
            for m in range(args.messages):
                text = " ".join(rng.choice(WORDS) for _ in range(12))
                if c % 1000 == 7 and m == 31:
                    text += " zanzibarite"  # a rare word, inside an answer of 10 conversations
                rows.append([cid, m, "user" if m % 2 == 0 else "assistant", text, now])
            cursor.executemany(
                "INSERT INTO chat_message (conversation_id, position, role, content, created_at, finish_reason,"
                " params, error, history_truncated) VALUES (%s, %s, %s, %s, %s, '', '{}', '', 0)", rows)
    return user.pk, time.perf_counter() - started


def timed(fn, repeats: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        count = len(fn())
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    data = tempfile.mkdtemp(prefix="bench-search-")
    os.environ["CHATGLM_DATA_DIR"] = data
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatglm_site.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from chat import search
    from chat.owners import Owner

    call_command("migrate", verbosity=0)
    user_id, build_seconds = build(args, random.Random(0))
    owner = Owner(user_id=user_id)
    total = args.conversations * args.messages
    machine = cpu_info()
    print(describe(machine))
    print(f"SQLite, {args.conversations:,} conversations x {args.messages} messages = {total:,} messages "
          f"(built in {build_seconds:.1f} s)\n")

    queries = {"rare word in answers": "zanzibarite", "common word": "mountain",
               "phrase": "river mountain", "no match": "qqqxyz"}
    rows = []
    # hits: conversations found (at most 30); the scan reads at most 400 matching messages.
    header = f"{'query':<24}{'hits':>6}{'scan':>6}{'index ms':>12}{'scan ms':>12}{'scan/index':>12}"
    print(header)
    print("-" * len(header))
    real_has_fts = search._has_fts
    for label, query in queries.items():
        indexed, hits = timed(lambda: search.search(owner, query), args.repeats)
        search._has_fts = lambda: False  # the portable fallback, same query, same database
        try:
            scanned, scan_hits = timed(lambda: search.search(owner, query), args.repeats)
        finally:
            search._has_fts = real_has_fts
        rows.append({"query": label, "text": query, "hits": hits, "scan_hits": scan_hits, "index_ms": round(indexed, 2),
                     "scan_ms": round(scanned, 2), "ratio": round(scanned / indexed, 1)})
        print(f"{label:<24}{hits:>6}{scan_hits:>6}{indexed:>12.1f}{scanned:>12.1f}{scanned / indexed:>12.1f}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"search-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"database": "sqlite", "conversations": args.conversations, "messages": args.messages,
                               "build_seconds": round(build_seconds, 1), "repeats_median_of": args.repeats,
                               "cpu": machine, "results": rows}, indent=2))
    print(f"\nwrote {out}")
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
