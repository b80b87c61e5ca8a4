"""A WebSocket on the Redis channel layer lives as long as its client: idle for longer than
the layer's blocking read (5 s) and redis-py's default socket timeout, then it still chats."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from tests.consumers.test_multiprocess import REDIS_URL, frames_until, redis_reachable, text_of

IDLE_SECONDS = 30


@pytest.mark.redis
async def test_an_idle_socket_on_redis_stays_open_and_chats(server_factory):
    if not redis_reachable():
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    server = server_factory.start(env={"REDIS_URL": REDIS_URL})
    async with connect(f"{server.ws_url}/ws/chat/", origin=server.url) as socket:
        await asyncio.sleep(IDLE_SECONDS)
        await socket.send(json.dumps({"type": "chat", "query": "still there?"}))
        frames = await frames_until(socket, "done", "error")
    assert frames[-1]["type"] == "done", frames[-1]
    assert text_of(frames) == frames[-1]["response"] == "You said: still there?"
    assert "Timeout reading" not in server.log
