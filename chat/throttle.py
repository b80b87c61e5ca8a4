"""Per-client rate limits and shares: who may start how much, and how fast.

A *client* is an account, an API key, or, for anonymous visitors and callers of an open
API, the client's IP address (a session is free to make, an address is not). Turns and new
conversations are limited by token buckets, `CHATGLM_TURNS_PER_MINUTE` and
`CHATGLM_CONVERSATIONS_PER_MINUTE` (the bucket holds a minute's worth, so a burst of that
size passes); an anonymous visitor owns at most `CHATGLM_MAX_VISITOR_CONVERSATIONS`; the
anonymous visitors of one address have at most `CHATGLM_MAX_RUNNING_PER_IP` answers
generating. Addresses in `CHATGLM_THROTTLE_EXEMPT` (loopback by default: local tools and
benchmarks; behind the HTTPS proxy, CHATGLM_HTTPS=1, the address is the one the proxy saw)
are not limited by address.

With REDIS_URL set, the rate buckets live in Redis (one script call per check), so every
`serve` process sharing it counts together; if Redis fails, the process's own buckets stand
in. The other counts (running answers, and the queue shares in the engine) are per process,
like the engine's queue: with N processes behind a balancer a client gets up to N times them.

The client's address reaches code that has no request (turns.py) through a context
variable, set per connection by chat.asgi_limits.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import ipaddress
import logging
import math
import time
import weakref
from functools import lru_cache

from asgiref.sync import sync_to_async
from django.conf import settings

from .errors import ChatError
from .owners import Owner

log = logging.getLogger(__name__)
_client_ip: contextvars.ContextVar[str | None] = contextvars.ContextVar("chatglm_client_ip", default=None)
MAX_BUCKETS = 100_000  # the least recently used are forgotten past this (a forgotten bucket is full)


def bind_client_ip(address: str | None) -> contextvars.Token:
    return _client_ip.set(address)


def client_ip() -> str | None:
    """The address of the connection being served, unless it is exempt (or unknown)."""
    address = _client_ip.get()
    return None if address is None or exempt(address) else address


def exempt(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _exempt_networks(tuple(settings.CHATGLM["THROTTLE_EXEMPT"])))


@lru_cache(maxsize=8)
def _exempt_networks(entries: tuple[str, ...]):
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


def client_key(owner: Owner) -> str | None:
    """Who is counted: the account, the API key, else the (non-exempt) address; None: nobody."""
    if owner.user_id is not None:
        return f"user:{owner.user_id}"
    if owner.api_key:
        return f"key:{owner.api_key}"
    ip = client_ip()
    return f"ip:{ip}" if ip else None


class Buckets:
    """Token buckets by key, `per_minute` tokens a minute, holding at most `per_minute`."""

    def __init__(self):
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, key: str, per_minute: int, now: float | None = None) -> float:
        """0 if a token was taken, else the seconds until one will be there."""
        now = time.monotonic() if now is None else now
        rate = per_minute / 60.0
        tokens, stamp = self._buckets.pop(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - stamp) * rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return wait

    def clear(self) -> None:
        self._buckets.clear()


buckets = Buckets()


class TokenBucket:
    """One client's bucket, kept by the client itself (a WebSocket's frames): `rate` tokens a
    second, up to `burst`; `take()` is False when the bucket is empty."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


FRAME_RATE = 20.0  # WebSocket frames per second, sustained
FRAME_BURST = 40  # frames accepted at once before the rate applies


def frame_bucket() -> TokenBucket:
    """The frame limit of one WebSocket (past it the socket is closed with 4429)."""
    return TokenBucket(FRAME_RATE, FRAME_BURST)

# The same bucket in Redis, on Redis's clock: tokens and stamp in a hash that expires once full.
TAKE_SCRIPT = """
local capacity, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 't', 's')
local tokens = tonumber(state[1]) or capacity
local stamp = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 's', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return tostring(wait)
"""
_redis_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # by event loop


def _redis():
    import redis.asyncio

    loop = asyncio.get_running_loop()
    client = _redis_clients.get(loop)
    if client is None:
        client = _redis_clients[loop] = redis.asyncio.Redis.from_url(
            settings.CHATGLM["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2)
    return client


async def _take(key: str, per_minute: int) -> float:
    if settings.CHATGLM["REDIS_URL"]:
        try:
            return float(await _redis().eval(TAKE_SCRIPT, 1, f"chatglm:throttle:{key}", per_minute, per_minute / 60.0))
        except Exception:  # noqa: BLE001 - Redis down: limit per process rather than not at all
            log.warning("rate limits: Redis failed, counting in this process", exc_info=True)
    return buckets.take(key, per_minute)


async def _limit(kind: str, key: str | None, per_minute: int, what: str) -> None:
    if not key or per_minute <= 0:
        return
    wait = await _take(f"{kind}:{key}", per_minute)
    if wait:
        raise ChatError(
            f"Too many {what}: at most {per_minute} a minute. Try again in {math.ceil(wait)} s.",
            status=429, type="rate_limit_error", code="rate_limited", retry_after=max(1, math.ceil(wait)),
        )


async def check_turn(owner: Owner, new_conversation: bool) -> None:
    """Before a turn starts: the client's turn rate, and its conversation limits if it makes one."""
    await _limit("turn", client_key(owner), settings.CHATGLM["TURNS_PER_MINUTE"], "questions")
    if new_conversation:
        await check_new_conversation(owner)


async def check_new_conversation(owner: Owner) -> None:
    """Before a conversation is created: the client's creation rate and a visitor's total."""
    await _limit("conversation", client_key(owner), settings.CHATGLM["CONVERSATIONS_PER_MINUTE"], "new conversations")
    cap = settings.CHATGLM["MAX_VISITOR_CONVERSATIONS"]
    if owner.user_id is None and owner.visitor is not None and cap > 0:
        if await _visitor_conversations(owner) >= cap:
            raise ChatError(
                f"An anonymous visitor keeps at most {cap} conversations: delete some, or sign up.",
                status=403, type="permission_error", code="too_many_conversations",
            )


@sync_to_async
def _visitor_conversations(owner: Owner) -> int:
    from .models import Conversation

    return Conversation.objects.filter(user__isnull=True, visitor=owner.visitor).count()


def new_page_session_wait() -> int:
    """0 if the page may make a new session for this address now, else seconds to wait (the
    page is sync, so this bucket is the process's own)."""
    per_minute = settings.CHATGLM["SESSIONS_PER_MINUTE"]
    ip = client_ip()
    if not ip or per_minute <= 0:
        return 0
    wait = buckets.take(f"session:ip:{ip}", per_minute)
    return max(1, math.ceil(wait)) if wait else 0


class RunningSlot:
    """One answer generating for an anonymous visitor's address (held until `release()`)."""

    running: collections.Counter = collections.Counter()

    def __init__(self, address: str | None):
        self.address = address
        if address is not None:
            self.running[address] += 1

    def release(self) -> None:
        if self.address is not None:
            self.running[self.address] -= 1
            if self.running[self.address] <= 0:
                del self.running[self.address]
            self.address = None


def running_slot(owner: Owner) -> RunningSlot:
    """A slot for an anonymous visitor's answer, counted by address, or ChatError 429.

    The per-person limit (CHATGLM_MAX_RUNNING_PER_USER) counts per session, and sessions are
    free: this counts the answers of all the anonymous sessions of one address."""
    address = client_ip() if owner.user_id is None and owner.visitor is not None else None
    limit = settings.CHATGLM["MAX_RUNNING_PER_IP"]
    if address is not None and limit > 0 and RunningSlot.running[address] >= limit:
        raise ChatError(
            f"Your address already has {limit} answers being generated; wait for one to finish or stop it.",
            status=429, type="rate_limit_error", code="too_many_running", retry_after=5,
        )
    return RunningSlot(address if limit > 0 else None)


def queue_owner(owner: Owner) -> str | None:
    """Whose share of the engine's queue a request counts against (None: no share applies)."""
    if owner.visitor is not None and owner.user_id is None:
        ip = client_ip()  # all the anonymous sessions of one address share one share
        return f"ip:{ip}" if ip else f"visitor:{owner.visitor}"
    return client_key(owner)
