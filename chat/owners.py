"""Who a request acts for: an account, an anonymous visitor, or an API key (or nobody)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import uuid

from django.conf import settings

from .errors import ChatError

VISITOR_SESSION_KEY = "chatglm_visitor"
# Set in the session when the chat page is rendered: with API keys set, only a session that
# the server issued and that has loaded the page may chat without a key (the page's own
# WebSocket and its /stream fallback). A made-up session cookie names no stored session.
PAGE_SESSION_KEY = "chatglm_page"


@dataclasses.dataclass(frozen=True)
class Owner:
    user_id: int | None = None
    visitor: uuid.UUID | None = None
    api_key: str = ""  # the key's name, never the key itself
    # A program on an open API (no CHATGLM_API_KEYS): it shares the key-less API conversations.
    open_api: bool = False

    @property
    def is_person(self) -> bool:
        """A browser user (account or anonymous session), as opposed to a program."""
        return self.user_id is not None or self.visitor is not None


def api_keys() -> dict[str, str]:
    """CHATGLM_API_KEYS as {key: name}. Entries are `name:key`, or a bare `key`, which is named
    by a hash of it (a prefix would be shared by keys alike and would store part of the secret).
    Entries with an empty key are ignored: an empty key must never match a missing header."""
    keys = {}
    for entry in settings.CHATGLM["API_KEYS"]:
        name, sep, key = entry.partition(":")
        if not sep:
            name, key = f"key-{hashlib.sha256(entry.encode()).hexdigest()[:12]}", entry
        if key:
            keys[key] = name
    return keys


def api_key_name(presented: str) -> str | None:
    """The name of the configured key equal to `presented`, compared in constant time."""
    found = None
    for key, name in api_keys().items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            found = name
    return found if presented else None


def bearer_token(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def session_owner(user, session, create: bool) -> Owner:
    """The browser owner: the logged-in account, else the session's visitor UUID.

    With `create`, a visitor UUID is put in the session (the caller must save the session
    before the response starts, or the cookie never reaches the browser).
    """
    if user is not None and user.is_authenticated:
        return Owner(user_id=user.pk)
    if settings.CHATGLM["REQUIRE_LOGIN"]:
        # Without this switch anyone may chat as an anonymous visitor, and so may a program
        # that loads the page like a browser, whatever CHATGLM_API_KEYS says.
        raise ChatError("Log in to use the chat.", status=401, type="authentication_error", code="login_required")
    raw = await session.aget(VISITOR_SESSION_KEY)
    if raw is None:
        if not create:
            return Owner()
        if api_keys():
            # With keys set a visitor is made by the page only (chat.views.pages): a session
            # cookie made up by a script gets no identity here.
            raise unauthorized("Open the chat page first, or send an API key.", code="page_session_required")
        raw = str(uuid.uuid4())
        await session.aset(VISITOR_SESSION_KEY, raw)
        await session.asave()
    return Owner(visitor=uuid.UUID(raw))


def unauthorized(message: str, code: str = "invalid_api_key") -> ChatError:
    return ChatError(message, status=401, type="authentication_error", code=code)


async def page_session_owner(user, session) -> Owner:
    """The owner of a browser session the server issued and that has loaded the chat page
    (logged in when CHATGLM_REQUIRE_LOGIN is on), or ChatError 401."""
    try:
        owner = await session_owner(user, session, create=False)  # login_required comes first
    except ValueError:  # a visitor id that is not a UUID: not a session this server wrote
        owner = Owner()
    loaded = await session.aget(PAGE_SESSION_KEY)
    if session.session_key is None or not loaded or not owner.is_person:
        raise unauthorized("Send an API key ('Authorization: Bearer <key>'), or chat from the page.",
                           code="page_session_required")
    return owner
