"""The page's conversation API: list, create, open, rename/configure, delete, export.

Session-authenticated JSON under /api/conversations. Unsafe methods pass Django's CSRF check
(the page sends X-CSRFToken); a failure is a JSON 403 like every other error here. The owner
is the session's account or anonymous visitor: another owner's conversation, an unknown id
and a malformed id are all the same 404.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from .. import exports, inputs, live, params, selectors, services, throttle
from ..errors import ChatError, invalid
from ..owners import session_owner
from ..turns import live_turn
from .common import error_response, json_errors, read_json

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_SEARCH_CHARS = 200
MAX_PAGE = 100_000


def _json(data: dict, status: int = 200) -> JsonResponse:
    return JsonResponse(data, status=status, json_dumps_params={"ensure_ascii": False})


def _check_csrf(request) -> None:
    if request.method in SAFE_METHODS:
        return
    if CsrfViewMiddleware(lambda req: None).process_view(request, None, (), {}) is not None:
        raise ChatError("CSRF check failed: send the X-CSRFToken header.", status=403,
                        type="permission_error", code="csrf_failed")


async def _owner(request, create: bool = False):
    return await session_owner(await request.auser(), request.session, create=create)


def _methods(**handlers):
    """One URL, one handler per HTTP method; others get a JSON 405 with Allow."""
    allowed = ", ".join(sorted(handlers))

    @csrf_exempt  # checked by _check_csrf, so that a failure is JSON
    @json_errors()
    async def view(request, *args, **kwargs):
        handler = handlers.get(request.method)
        if handler is None:
            response = error_response(ChatError(f"Method {request.method} not allowed; use {allowed}.",
                                                status=405, code="method_not_allowed"))
            response["Allow"] = allowed
            return response
        _check_csrf(request)
        return await handler(request, *args, **kwargs)

    return view


def _page_number(raw: str | None) -> int:
    if raw is None or raw == "":
        return 1
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:  # "²".isdigit() is True
        raise invalid("page", f"'page' must be an integer from 1 to {MAX_PAGE}.", "invalid_value")
    return int(raw)


def _summary(conversation) -> dict:
    return {**exports.conversation_summary(conversation), "message_count": conversation.message_count}


async def list_conversations(request):
    page = _page_number(request.GET.get("page"))
    search = inputs.query_text(request.GET.get("q"), "q", MAX_SEARCH_CHARS)
    owner = await _owner(request)
    rows, has_next = await sync_to_async(selectors.conversation_page)(owner, page, search)
    return _json({"conversations": [_summary(c) for c in rows], "page": page, "has_next": has_next})


@sync_to_async
def _detail(owner, conversation_id) -> dict:
    conversation = selectors.owned_conversation(owner, conversation_id)
    messages = list(selectors.messages_of(conversation))
    generating = live_turn(str(conversation.id)) is not None or selectors.answer_unfinished(conversation)
    return {**exports.conversation_data(conversation, messages), "generating": generating}


async def create_conversation(request):
    fields = services.new_conversation_fields(read_json(request))  # before the session gets a visitor
    await throttle.check_new_conversation(await _owner(request))  # before a session is made for it
    owner = await _owner(request, create=True)
    conversation = await sync_to_async(services.create_conversation)(owner, fields)
    return _json(await _detail(owner, conversation.id), status=201)


async def get_conversation(request, conversation_id):
    owner = await _owner(request)
    return _json(await _detail(owner, params.conversation_id(conversation_id)))


async def update_conversation(request, conversation_id):
    owner = await _owner(request)
    conversation_id = params.conversation_id(conversation_id)
    data = read_json(request)
    await sync_to_async(services.update_conversation)(owner, conversation_id, data)
    return _json(await _detail(owner, conversation_id))


async def delete_conversation(request, conversation_id):
    owner = await _owner(request)
    conversation_id = params.conversation_id(conversation_id)
    await sync_to_async(services.delete_conversation)(owner, conversation_id)
    # Nobody can see this answer any more: stop generating it, here or on another process.
    await live.stop(conversation_id)
    return HttpResponse(status=204)


EXPORT_FORMATS = {
    "json": ("json", "application/json; charset=utf-8", exports.conversation_json),
    "md": ("md", "text/markdown; charset=utf-8", exports.conversation_markdown),
}


@sync_to_async
def _export(owner, conversation_id, fmt: str) -> HttpResponse:
    extension, content_type, render = EXPORT_FORMATS[fmt]
    conversation = selectors.owned_conversation(owner, conversation_id)
    body = render(conversation, list(selectors.messages_of(conversation)))
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = exports.attachment_header(exports.filename(conversation, extension))
    return response


async def export_conversation(request, conversation_id):
    fmt = request.GET.get("format", "json")
    if fmt not in EXPORT_FORMATS:
        raise invalid("format", f"'format' must be one of: {', '.join(EXPORT_FORMATS)}.", "invalid_value")
    owner = await _owner(request)
    return await _export(owner, params.conversation_id(conversation_id), fmt)


urlpatterns = [
    path("api/conversations", _methods(GET=list_conversations, POST=create_conversation), name="conversations"),
    path("api/conversations/<str:conversation_id>",
         _methods(GET=get_conversation, PATCH=update_conversation, DELETE=delete_conversation),
         name="conversation"),
    path("api/conversations/<str:conversation_id>/export", _methods(GET=export_conversation),
         name="conversation-export"),
]
