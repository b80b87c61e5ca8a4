"""`GET /api/search?q=…`: the sidebar's search over titles and message text (chat/search.py)."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.urls import path

from .. import exports, search
from ..errors import invalid
from ..owners import page_caller
from .common import json_response, methods
from .conversations import MAX_SEARCH_CHARS


async def search_conversations(request):
    query = " ".join(request.GET.get("q", "").split())
    if not query:
        raise invalid("q", "'q' is required.", "missing")
    if len(query) > MAX_SEARCH_CHARS:
        raise invalid("q", f"'q' is longer than {MAX_SEARCH_CHARS} characters.", "too_long")
    owner = await page_caller(request)
    hits = await sync_to_async(search.search)(owner, query)
    return json_response({"query": query, "results": [
        {
            **exports.conversation_summary(hit.conversation),
            "message_id": hit.message_id,
            "role": hit.role,
            "snippet": hit.snippet,
            "highlight": list(hit.highlight) if hit.highlight else None,
        }
        for hit in hits
    ]})


urlpatterns = [path("api/search", methods(GET=search_conversations), name="search")]
