"""The in-process channel layer sweeps expired messages at most once a second, and still does."""

from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer

from chat.channel_layer import SWEEP_SECONDS, ThrottledInMemoryChannelLayer


async def test_messages_still_expire_and_groups_still_deliver():
    assert isinstance(get_channel_layer(), ThrottledInMemoryChannelLayer)  # the site's layer without Redis
    layer = ThrottledInMemoryChannelLayer(expiry=0.05)
    await layer.group_add("conv.a", "reader.one")
    await layer.group_send("conv.a", {"type": "turn.delta", "delta": "hi"})
    assert (await layer.receive("reader.one"))["delta"] == "hi"
    await layer.group_add("conv.a", "stale.one")
    await layer.send("stale.one", {"type": "old"})  # never read
    await asyncio.sleep(SWEEP_SECONDS + 0.1)  # expired, and the next sweep is due
    await layer.send("fresh.one", {"type": "new"})
    assert (await layer.receive("fresh.one"))["type"] == "new"  # this receive sweeps
    assert "stale.one" not in layer.channels
    assert set(layer.groups["conv.a"]) == {"reader.one"}  # an expired message drops its reader from groups
