"""Who is calling the APIs: an API key's holder, a browser session, or an open API's caller.

Rules (README "Security"): a request with `Authorization: Bearer` must carry a configured
key; a request that relies on the browser's session cookie must pass Django's CSRF check
(the session carries authority); a request with neither is a program on an open API, which
is allowed only while CHATGLM_API_KEYS is unset.
"""

from __future__ import annotations

from django.conf import settings
from django.middleware.csrf import CsrfViewMiddleware

from ..errors import ChatError
from ..owners import Owner, api_key_name, api_keys, bearer_token, session_owner


def unauthorized(message: str) -> ChatError:
    return ChatError(message, status=401, type="authentication_error", code="invalid_api_key")


def _csrf_rejection(request):
    middleware = CsrfViewMiddleware(lambda req: None)
    return middleware.process_view(request, None, (), {})


async def api_caller(request, *, allow_session: bool = True) -> Owner:
    """The Owner a request acts for, or raise ChatError 401/403."""
    authorization = request.headers.get("Authorization", "")
    if authorization:
        name = api_key_name(bearer_token(authorization)) if api_keys() else None
        if name is None:
            if not api_keys():
                return Owner(open_api=True)  # an open API ignores keys, as OpenAI clients always send one
            raise unauthorized("Invalid API key.")
        return Owner(api_key=name)
    if allow_session and settings.SESSION_COOKIE_NAME in request.COOKIES:
        if request.method not in ("GET", "HEAD", "OPTIONS") and _csrf_rejection(request) is not None:
            raise ChatError("CSRF check failed: send the X-CSRFToken header.", status=403,
                            type="permission_error", code="csrf_failed")
        return await session_owner(await request.auser(), request.session, create=True)
    if api_keys():
        raise unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
    return Owner(open_api=True)
