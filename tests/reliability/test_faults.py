"""Faults behind the endpoints, over every protocol: a model whose output cannot be stored, an
upstream that fails (typed 502/503/504, nothing of its text shown or stored), a model that
raises mid-stream or hangs (CHATGLM_GENERATION_TIMEOUT), and a database that fails while a
turn starts or finishes. Runs on SQLite and, with DATABASE_URL, PostgreSQL."""

from __future__ import annotations

import contextlib

import pytest
from django.db import OperationalError
from django.db.backends.utils import CursorWrapper

from chat.models import FinishReason, Message

from .conftest import dump_chat_tables
from .protocols import PROTOCOLS, ask
from .upstream import SECRETS, HostileUpstream

pytestmark = pytest.mark.django_db(transaction=True)
HTTP_STATUS = ("chat", "openai")  # protocols whose status line carries the error


@pytest.fixture
def hostile(engine_env):
    upstream = HostileUpstream()
    engine_env(CHATGLM_BACKEND="openai", CHATGLM_UPSTREAM_URL=upstream.url)
    yield upstream
    upstream.stop()


async def last_answer() -> Message:
    return await Message.objects.filter(role="assistant").order_by("pk").alast()


async def settled_answer() -> Message:
    """The last answer once its turn has written it (a WebSocket's runner may still be saving)."""
    import asyncio

    from chat.owners import Owner
    from chat.turns import running_turns

    for _ in range(200):
        if running_turns(Owner(open_api=True)) == 0:
            break
        await asyncio.sleep(0.02)
    return await last_answer()


# -- model output ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_unstorable_model_output_is_replaced_and_the_answer_saved(hostile, protocol):
    """Lone surrogates and NUL from the model become U+FFFD on every database; a surrogate pair
    split across two chunks is joined into its character."""
    out = await ask(protocol, r'emit:["ok \ud800 a\u0000b ", "\ud83d", "\ude00 end"]', model="hostile")
    expected = "ok \ufffd a\ufffdb \U0001f600 end"
    assert out.error is None and out.done, out
    assert out.text == expected
    answer = await settled_answer()
    assert (answer.content, answer.finish_reason) == (expected, FinishReason.STOP)


# -- upstream failures ------------------------------------------------------------------------------

UPSTREAM_FAILURES = [
    ("status:500", 502, "upstream_bad_response"),
    ("status:401", 502, "upstream_bad_response"),
    ("error-chunk", 502, "upstream_bad_response"),
    ("garbage", 502, "upstream_bad_response"),
    ("status:503", 503, "upstream_unavailable"),
    ("status:504", 504, "upstream_timeout"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("query,status,code", UPSTREAM_FAILURES, ids=[f[0] for f in UPSTREAM_FAILURES])
async def test_upstream_failures_are_typed_and_leak_nothing(hostile, protocol, query, status, code):
    out = await ask(protocol, query, model="hostile")
    assert out.error is not None and not out.done, out
    assert (out.error["code"], out.error["type"]) == (code, "server_error")
    assert "request id" in out.error["message"]
    if protocol in HTTP_STATUS:
        assert out.status == status
    answer = await settled_answer()
    assert (answer.finish_reason, answer.error) == (FinishReason.ERROR, code)
    stored = repr(await dump_chat_tables())
    for secret in SECRETS:
        assert secret not in out.raw and secret not in stored


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_unreachable_upstream_is_a_503(hostile, protocol):
    hostile.stop()  # it was there when the model loaded; now the port refuses connections
    out = await ask(protocol, "hello", model="hostile")
    assert out.error is not None and out.error["code"] == "upstream_unavailable", out
    if protocol in HTTP_STATUS:
        assert out.status == 503
    assert "127.0.0.1" not in out.raw


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_hanging_upstream_ends_as_a_504_after_the_generation_timeout(hostile, settings, protocol):
    settings.CHATGLM = {**settings.CHATGLM, "GENERATION_TIMEOUT": 0.5}
    out = await ask(protocol, "hang", model="hostile")
    assert out.error is not None and out.error["code"] == "generation_timeout", out
    if protocol in HTTP_STATUS:
        assert out.status == 504
    answer = await settled_answer()
    assert (answer.finish_reason, answer.error, answer.content) == (FinishReason.ERROR, "generation_timeout", "waiting ")


async def test_a_hanging_local_model_ends_as_a_504(engine_env, settings):
    engine_env(CHATGLM_FAKE_DELAY_MS="3000")  # each decode step takes 3 s: far past the timeout
    settings.CHATGLM = {**settings.CHATGLM, "GENERATION_TIMEOUT": 0.3}
    out = await ask("chat", "hello")
    assert (out.status, out.error["code"]) == (504, "generation_timeout")
    answer = await settled_answer()
    assert (answer.finish_reason, answer.error) == (FinishReason.ERROR, "generation_timeout")


# -- the model raising --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_model_raising_mid_stream(engine_env, protocol):
    engine_env(CHATGLM_FAKE_DELAY_MS="1")
    out = await ask(protocol, "please [[fake:error]] now")
    assert out.error is not None and out.error["code"] == "generation_failed" and not out.done, out
    if protocol in HTTP_STATUS:
        assert out.status == 500
    assert "as asked" not in out.raw and "RuntimeError" not in out.raw  # the exception stays in the log
    answer = await settled_answer()
    assert answer.finish_reason == FinishReason.ERROR
    if protocol not in HTTP_STATUS:  # the streams showed the partial answer that was saved
        assert answer.content == out.text and out.text


# -- the database failing -------------------------------------------------------------------------------


@contextlib.contextmanager
def failing_database(statement: str, table: str):
    """Make every `statement` on `table` fail with a database error, on whatever connection and
    thread runs it (Django gives each request its own thread-sensitive context)."""
    execute = CursorWrapper._execute

    def refuse(self, sql, *args):
        if sql.lstrip().upper().startswith(statement) and f'"{table}"' in sql:
            raise OperationalError("disk I/O error (injected by the test)")
        return execute(self, sql, *args)

    CursorWrapper._execute = refuse
    try:
        yield
    finally:
        CursorWrapper._execute = execute


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_database_failing_while_the_answer_is_saved(engine, protocol):
    with failing_database("UPDATE", "chat_message"):
        out = await ask(protocol, "hello")
        await settled_answer()
    assert out.error is not None and out.error["code"] == "not_saved" and not out.done, out
    if protocol in HTTP_STATUS:
        assert out.status == 503
    answer = await last_answer()
    assert answer.finish_reason == FinishReason.GENERATING  # never reported saved; a restart marks it


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_database_failing_when_a_turn_starts(engine, protocol):
    with failing_database("INSERT", "chat_conversation"):
        out = await ask(protocol, "hello")
    assert out.error is not None and out.error["code"] == "database_unavailable", out
    if out.status is not None:
        assert out.status == 503
    assert "disk I/O" not in out.raw
    assert await Message.objects.acount() == 0
