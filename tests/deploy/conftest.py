"""Services for the multi-process tests: Redis and PostgreSQL on 127.0.0.1, skipped cleanly
where absent; each test gets a database of its own (the suite's test database is never used)."""

from __future__ import annotations

import os
import re
import time
import uuid

import pytest

REDIS_URL = os.environ.get("REDIS_URL_FOR_TESTS", "redis://127.0.0.1:6379/0")
POSTGRES_ADMIN = os.environ.get("POSTGRES_URL_FOR_TESTS", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def redis_url():
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def database_url(tmp_path):
    """A fresh PostgreSQL database when a server is there, else a SQLite file."""
    import psycopg

    name = f"chatglm_deploy_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=2)
    except psycopg.Error:
        yield f"sqlite:///{tmp_path / 'data' / 'db.sqlite3'}"
        return
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_for(predicate, timeout: float = 30, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not true within {timeout} s: {predicate}")


def worker_of(server, request_id: str) -> int:
    """The pid of the worker that served a request, from its access-log line."""
    pattern = re.compile(rf'"request_id": "{re.escape(request_id)}".*?"worker": (\d+)')
    return int(wait_for(lambda: pattern.search(server.log), timeout=30)[1])  # written when the app ends
