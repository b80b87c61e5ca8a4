"""The page's conversation API: list, create, open, rename/configure, delete, export.

Session-authenticated JSON under /api/conversations (chat.views.common.methods: unsafe methods
pass Django's CSRF check, the page sends X-CSRFToken; a failure is a JSON 403). The owner
is the session's account or anonymous visitor: another owner's conversation, an unknown id
and a malformed id are all the same 404.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpResponse
from django.urls import path

from .. import exports, inputs, live, params, selectors, services, throttle
from ..errors import invalid
from ..owners import page_caller
from .common import conversation_detail, json_response, methods, read_json

MAX_SEARCH_CHARS = 200
MAX_PAGE = 100_000


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
    owner = await page_caller(request)
    rows, has_next = await sync_to_async(selectors.conversation_page)(owner, page, search)
    return json_response({"conversations": [_summary(c) for c in rows], "page": page, "has_next": has_next})


async def create_conversation(request):
    fields = services.new_conversation_fields(read_json(request))  # before the session gets a visitor
    await throttle.check_new_conversation(await page_caller(request))  # before a session is made for it
    owner = await page_caller(request, create=True)
    conversation = await sync_to_async(services.create_page_conversation)(owner, fields)
    return json_response(await conversation_detail(owner, conversation.id), status=201)


async def get_conversation(request, conversation_id):
    owner = await page_caller(request)
    return json_response(await conversation_detail(owner, params.conversation_id(conversation_id)))


async def update_conversation(request, conversation_id):
    owner = await page_caller(request)
    conversation_id = params.conversation_id(conversation_id)
    data = read_json(request)
    await sync_to_async(services.update_conversation)(owner, conversation_id, data)
    return json_response(await conversation_detail(owner, conversation_id))


async def delete_conversation(request, conversation_id):
    owner = await page_caller(request)
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
    owner = await page_caller(request)
    return await _export(owner, params.conversation_id(conversation_id), fmt)


urlpatterns = [
    path("api/conversations", methods(GET=list_conversations, POST=create_conversation), name="conversations"),
    path("api/conversations/<str:conversation_id>",
         methods(GET=get_conversation, PATCH=update_conversation, DELETE=delete_conversation),
         name="conversation"),
    path("api/conversations/<str:conversation_id>/export", methods(GET=export_conversation),
         name="conversation-export"),
]
