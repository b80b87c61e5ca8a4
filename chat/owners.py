"""Who is calling, for HTTP and WebSocket alike: an account, an anonymous visitor, an API key,
or a program on an open API. One place for the rules (README "Security" has the whole matrix):

- A key (`Authorization: Bearer <key>`; a socket may also send `?api_key=<key>`) must be a
  configured one while CHATGLM_API_KEYS is set; an open API ignores keys, as OpenAI clients
  always send one.
- With API keys set, nothing else opens the program API, whatever cookies come along, with
  two exceptions: the page's own WebSocket and its `/stream` fallback, from a browser session
  that the server issued and that has loaded the page (with a valid CSRF token over HTTP;
  logged in when CHATGLM_REQUIRE_LOGIN is on); and `/clear` for a logged-in staff member. A
  made-up session cookie names no stored session, so a script that invents one gets 401.
- With no keys (an open API), a request with the session cookie acts for the browser's owner
  after Django's CSRF check (a socket's Origin check stands in for it, chat.ws_origin); one
  without is a program on the open API.

`http_caller` (the program API), `page_caller` (the page's session API) and `socket_caller`
(the chat WebSocket) apply them; `check_csrf` is the one CSRF rule, answered as JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import uuid
from urllib.parse import parse_qs

from django.conf import settings
from django.middleware.csrf import CsrfViewMiddleware

from .errors import ChatError

log = logging.getLogger(__name__)

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


# -- resolving the caller ---------------------------------------------------------------------

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# The endpoints a browser session may use while API keys are set (URL names): the page's
# WebSocket falls back to `/stream`; `/clear` is also a staff member's.
PAGE_ENDPOINTS = {"seed-stream"}
STAFF_ENDPOINTS = {"seed-clear"}


def check_csrf(request) -> None:
    """Django's CSRF check for an unsafe method, failing as ChatError 403 (JSON, not HTML)."""
    if request.method in SAFE_METHODS:
        return
    if CsrfViewMiddleware(lambda req: None).process_view(request, None, (), {}) is not None:
        raise ChatError("CSRF check failed: send the X-CSRFToken header.", status=403,
                        type="permission_error", code="csrf_failed")


def key_owner(presented: str) -> Owner:
    """The owner of a presented key: the open API if no keys are set, else the key's name or 401."""
    if not api_keys():
        return Owner(open_api=True)
    name = api_key_name(presented)
    if name is None:
        raise unauthorized("Invalid API key.")
    return Owner(api_key=name)


def _endpoint(request) -> str | None:
    match = getattr(request, "resolver_match", None)
    return match.url_name if match is not None else None


async def http_caller(request, *, allow_session: bool = True) -> Owner:
    """The owner a program-API request acts for, or ChatError 401/403. `allow_session=False`
    for the OpenAI API: programs only, the browser session is not used."""
    authorization = request.headers.get("Authorization", "")
    if authorization:
        return key_owner(bearer_token(authorization))
    has_session = allow_session and settings.SESSION_COOKIE_NAME in request.COOKIES
    if api_keys():
        endpoint = _endpoint(request)
        if has_session and endpoint in PAGE_ENDPOINTS:
            check_csrf(request)
            return await page_session_owner(await request.auser(), request.session)
        if has_session and endpoint in STAFF_ENDPOINTS:
            check_csrf(request)
            user = await request.auser()
            if user.is_active and user.is_staff:
                return Owner(user_id=user.pk)
        raise unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
    if has_session:
        check_csrf(request)
        return await session_owner(await request.auser(), request.session, create=True)
    return Owner(open_api=True)


async def page_caller(request, create: bool = False) -> Owner:
    """The owner of a request to the page's own API (/api/...): the session's account or visitor."""
    return await session_owner(await request.auser(), request.session, create=create)


def scope_header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def socket_credential(scope) -> str | None:
    """The key a WebSocket handshake presents (`?api_key=`, else `Authorization`), or None."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    presented = (query.get("api_key") or [None])[0]
    if presented is None:
        authorization = scope_header(scope, b"authorization")
        if authorization is not None:
            presented = bearer_token(authorization)
    return presented


async def socket_caller(scope) -> Owner:
    """The owner a chat WebSocket acts for (it passed the Origin check, chat.ws_origin): its key's,
    else its browser session's, else a program on the open API; or ChatError 401."""
    presented = socket_credential(scope)
    if presented is not None:
        return key_owner(presented)
    user, session = scope.get("user"), scope.get("session")
    live = False
    if session is not None and settings.SESSION_COOKIE_NAME in scope.get("cookies", {}):
        await session.aget(PAGE_SESSION_KEY)  # loads it: an unknown key leaves session_key None
        live = session.session_key is not None
    if api_keys():
        if not live:
            raise unauthorized("Missing API key: connect with '?api_key=<key>' or open the page first.")
        return await page_session_owner(user, session)
    if user is not None and user.is_authenticated:
        return Owner(user_id=user.pk)
    if live:
        # The cookie names a live session, so a new visitor id saved in it stays the browser's
        # (a session created here could never reach the browser as a cookie).
        try:
            return await session_owner(user, session, create=True)
        except ValueError:  # a visitor id that is not a UUID: not a usable session
            log.warning("websocket: session with a malformed visitor id")
    return Owner(open_api=True)
