"""Running-answer claims shared by every server process, on Redis (when REDIS_URL is set).

Two rules must hold whichever process a request reaches (`serve --workers N`, or several
hosts behind a proxy): one answer at a time per conversation (409 `turn_in_progress`), and at
most CHATGLM_MAX_RUNNING_PER_USER answers generating per person (429 `too_many_running`).
`chat.turns._Claim` checks its own process first, then asks here.

Each claim is a random token. One Lua script checks and takes both holds atomically (Redis
runs scripts one at a time), so two workers cannot both pass the checks:

- `chatglm:claim:conv:<conversation id>`: the token of the turn answering in it;
- `chatglm:claim:running:<owner>`: a sorted set of the owner's tokens, scored by expiry.

Holds are leases of LEASE_SECONDS, renewed by a thread while the turn runs: a process that
dies (SIGKILL, a lost host) does not block a conversation or a user's slots for longer than
that, and a turn that ends releases its holds at once.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

from django.conf import settings

from .errors import ChatError

log = logging.getLogger(__name__)

LEASE_SECONDS = 60
BUSY, LIMIT, OK = "busy", "limit", "ok"

_ACQUIRE = """
local conv, running = KEYS[1], KEYS[2]
local token, now, expiry, limit, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
if conv ~= '' and redis.call('EXISTS', conv) == 1 then return 'busy' end
redis.call('ZREMRANGEBYSCORE', running, '-inf', now)
if limit > 0 and redis.call('ZCARD', running) >= limit then return 'limit' end
redis.call('ZADD', running, expiry, token)
redis.call('PEXPIRE', running, lease)
if conv ~= '' then redis.call('SET', conv, token, 'PX', lease) end
return 'ok'
"""
_RELEASE = """
redis.call('ZREM', KEYS[2], ARGV[1])
if KEYS[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
_RENEW = """
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
if KEYS[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


def owner_key(owner) -> str:
    if owner.user_id is not None:
        return f"user:{owner.user_id}"
    if owner.visitor is not None:
        return f"visitor:{owner.visitor}"
    return f"key:{owner.api_key}" if owner.api_key else "open-api"


def _unavailable(exc: Exception) -> ChatError:
    log.error("Redis is not reachable for the running-answer claims: %s", exc)
    return ChatError("The server cannot take new answers right now; try again shortly.", status=503,
                     type="server_error", code="claims_unavailable", retry_after=5)


class SharedClaims:
    def __init__(self, url: str):
        import redis

        self.errors = (redis.RedisError,)
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.acquire_script = self.client.register_script(_ACQUIRE)
        self.release_script = self.client.register_script(_RELEASE)
        self.renew_script = self.client.register_script(_RENEW)
        self.held: dict[str, list[str]] = {}  # token -> [conversation key or '', running key]
        self.lock = threading.Lock()
        threading.Thread(target=self._renew_forever, name="chatglm-claims", daemon=True).start()

    def acquire(self, owner, conversation_id: str | None, limit: int) -> tuple[str, str]:
        """(OK, token), or (BUSY or LIMIT, "") with nothing taken."""
        token = secrets.token_hex(16)
        keys = [f"chatglm:claim:conv:{conversation_id}" if conversation_id else "",
                f"chatglm:claim:running:{owner_key(owner)}"]
        now = time.time()
        try:
            verdict = self.acquire_script(keys, [token, now, now + LEASE_SECONDS, limit, LEASE_SECONDS * 1000])
        except self.errors as exc:
            raise _unavailable(exc) from exc
        verdict = verdict.decode() if isinstance(verdict, bytes) else verdict
        if verdict != OK:
            return verdict, ""
        with self.lock:
            self.held[token] = keys
        return OK, token

    def hold(self, token: str, conversation_id: str) -> None:
        """A turn that created its conversation holds it from now on (nobody else knew its id)."""
        key = f"chatglm:claim:conv:{conversation_id}"
        with self.lock:
            self.held[token][0] = key
        try:
            self.client.set(key, token, px=LEASE_SECONDS * 1000)
        except self.errors as exc:
            log.error("could not record the claim on conversation %s: %s", conversation_id, exc)

    def release(self, token: str) -> None:
        with self.lock:
            keys = self.held.pop(token, None)
        if keys is None:
            return
        try:
            self.release_script(keys, [token])
        except self.errors as exc:  # the lease runs out by itself
            log.error("could not release a running-answer claim: %s", exc)

    def _renew_forever(self) -> None:
        while True:
            time.sleep(LEASE_SECONDS / 4)
            with self.lock:
                held = [(token, list(keys)) for token, keys in self.held.items()]
            for token, keys in held:
                try:
                    self.renew_script(keys, [token, time.time() + LEASE_SECONDS, LEASE_SECONDS * 1000])
                except self.errors as exc:
                    log.error("could not renew a running-answer claim: %s", exc)


_shared: SharedClaims | None = None
_shared_lock = threading.Lock()


def shared_claims() -> SharedClaims | None:
    """The Redis claims when REDIS_URL is set; None: the process's own counts are the whole truth."""
    global _shared
    url = settings.CHATGLM["REDIS_URL"]
    if not url:
        return None
    with _shared_lock:
        if _shared is None:
            _shared = SharedClaims(url)
        return _shared
