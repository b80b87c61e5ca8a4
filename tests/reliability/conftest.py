"""Shared pieces of the reliability suite: a dump of the chat tables, and the adapters that send
one raw body (or frame) to each endpoint and read back the error the same way for all."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator

from chat.models import Conversation, Message
from chatglm_site.asgi import application

SITE = [(b"origin", b"http://localhost"), (b"host", b"localhost")]


def chat_tables() -> list:
    """Every row of the chat tables, to assert that a refused request changed nothing."""
    return [
        list(Conversation.objects.order_by("pk").values()),
        list(Message.objects.order_by("pk").values()),
    ]


dump_chat_tables = sync_to_async(chat_tables)


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    """A new in-memory layer per test: its queues belong to one event loop."""
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


@pytest.fixture(autouse=True)
async def settled_turns():
    """Let every turn a test started save its answer before the database is flushed: a save
    that lands after the flush leaves a row behind for the next test (seen on PostgreSQL)."""
    yield
    from chat import turns

    loop = asyncio.get_running_loop()
    pending = [task for task in turns._runner_tasks if not task.done() and task.get_loop() is loop]
    if pending:
        await asyncio.wait(pending, timeout=30)


@dataclasses.dataclass
class Reply:
    """What an endpoint answered to one bad body: the status (None for a WebSocket error
    frame), the `error` object, and whether the socket still works afterwards."""

    status: int | None
    error: dict | None
    content_type: str = ""
    socket_open: bool = True


async def http_send(client, method: str, path: str, raw: bytes, content_type: str = "application/json") -> Reply:
    response = await client.generic(method, path, raw, content_type=content_type)
    try:
        body = response.json()
    except ValueError:
        body = {}
    return Reply(response.status_code, body.get("error"), response.get("Content-Type", ""))


async def ws_send(raw: bytes | str, headers=SITE) -> Reply:
    """One frame on a fresh socket: the first frame back, then proof the socket still answers."""
    socket = WebsocketCommunicator(application, "/ws/chat/", headers=list(headers))
    connected, _ = await socket.connect()
    assert connected
    try:
        if isinstance(raw, bytes):
            try:
                await socket.send_to(text_data=raw.decode("utf-8"))
            except UnicodeDecodeError:  # not text: a client can only send such bytes as a binary frame
                await socket.send_to(bytes_data=raw)
        else:
            await socket.send_to(text_data=raw)
        frame = await socket.receive_json_from(timeout=10)
        # Still open and reading frames: a frame missing its field gets its own error.
        await socket.send_to(text_data='{"type": "subscribe", "request_id": "probe"}')
        probe = await socket.receive_json_from(timeout=10)
        open_after = probe.get("request_id") == "probe" and probe["error"]["code"] == "missing"
        return Reply(None, frame.get("error") if frame.get("type") == "error" else None, socket_open=open_after)
    finally:
        await socket.disconnect()


async def foreign_conversation() -> Conversation:
    """A conversation of an anonymous visitor nobody in these tests is."""
    return await Conversation.objects.acreate(visitor=uuid.uuid4(), title="someone else's")
