"""Who is calling the program API (`/chat`, `/stream`, `/clear`, `/v1/*`).

The rules (README "Security" has the whole matrix):

- `Authorization: Bearer <key>` must be a configured key while CHATGLM_API_KEYS is set (an
  open API ignores keys, as OpenAI clients always send one).
- With API keys set, nothing else opens the program API, whatever cookies come along, with
  two exceptions: the page's own `/stream` fallback, from a browser session that the server
  issued and that has loaded the page, with a valid CSRF token (logged in when
  CHATGLM_REQUIRE_LOGIN is on); and `/clear` for a logged-in staff member. A made-up session
  cookie names no stored session, so a script that invents a session and CSRF pair gets 401.
- With no keys (an open API), a request with the session cookie acts for the browser's
  owner after Django's CSRF check; one without is a program on the open API.
"""

from __future__ import annotations

from django.conf import settings
from django.middleware.csrf import CsrfViewMiddleware

from ..errors import ChatError
from ..owners import Owner, api_key_name, api_keys, bearer_token, page_session_owner, session_owner, unauthorized

# The endpoints a browser session may use while API keys are set (URL names): the page's
# WebSocket falls back to `/stream`; `/clear` is also a staff member's.
PAGE_ENDPOINTS = {"seed-stream"}
STAFF_ENDPOINTS = {"seed-clear"}


def _check_csrf(request) -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if CsrfViewMiddleware(lambda req: None).process_view(request, None, (), {}) is not None:
        raise ChatError("CSRF check failed: send the X-CSRFToken header.", status=403,
                        type="permission_error", code="csrf_failed")


def _endpoint(request) -> str | None:
    match = getattr(request, "resolver_match", None)
    return match.url_name if match is not None else None


async def api_caller(request, *, allow_session: bool = True) -> Owner:
    """The Owner a request acts for, or raise ChatError 401/403."""
    authorization = request.headers.get("Authorization", "")
    keys = api_keys()
    if authorization:
        if not keys:
            return Owner(open_api=True)
        name = api_key_name(bearer_token(authorization))
        if name is None:
            raise unauthorized("Invalid API key.")
        return Owner(api_key=name)
    has_session = allow_session and settings.SESSION_COOKIE_NAME in request.COOKIES
    if keys:
        endpoint = _endpoint(request)
        if has_session and endpoint in PAGE_ENDPOINTS:
            _check_csrf(request)
            return await page_session_owner(await request.auser(), request.session)
        if has_session and endpoint in STAFF_ENDPOINTS:
            _check_csrf(request)
            user = await request.auser()
            if user.is_active and user.is_staff:
                return Owner(user_id=user.pk)
        raise unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
    if has_session:
        _check_csrf(request)
        return await session_owner(await request.auser(), request.session, create=True)
    return Owner(open_api=True)
