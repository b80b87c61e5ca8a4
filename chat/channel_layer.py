"""The in-process channel layer (no REDIS_URL), with its expiry sweep done at most once a second.

Channels' InMemoryChannelLayer sweeps every channel and group for expired messages on each
`receive` and `group_send`: O(sockets) work per message, so O(sockets²) per decode step when
hundreds of WebSocket turns broadcast their deltas (measured: a fifth of the server's CPU
with 100 sockets). Messages expire after a minute and group memberships after a day, so a
sweep a second later changes nothing a client can see.
"""

from __future__ import annotations

import time

from channels.layers import InMemoryChannelLayer

SWEEP_SECONDS = 1.0


class ThrottledInMemoryChannelLayer(InMemoryChannelLayer):
    _swept_at = float("-inf")

    def _clean_expired(self):
        now = time.monotonic()
        if now - self._swept_at >= SWEEP_SECONDS:
            self._swept_at = now
            super()._clean_expired()
