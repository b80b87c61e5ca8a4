"""Share links: the owner's API (create, list, revoke) and the public read-only page `/s/<id>`.

The public page has no sidebar, composer or session: it reads no session and sets no cookie,
renders the snapshot through the page's sanitizing Markdown renderer (share.js), and is kept
out of search engines (`X-Robots-Tag` and a robots meta tag). A revoked or unknown id is 404.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.urls import path

from .. import params, sharing
from ..owners import page_caller
from .common import json_response, methods

NOINDEX = "noindex, nofollow, noarchive"


async def create_share(request, conversation_id):
    owner = await page_caller(request)
    share = await sync_to_async(sharing.create_share)(owner, params.conversation_id(conversation_id))
    return json_response(sharing.share_data(share), status=201)


async def list_shares(request, conversation_id):
    owner = await page_caller(request)
    shares = await sync_to_async(sharing.shares_of)(owner, params.conversation_id(conversation_id))
    return json_response({"shares": [sharing.share_data(s) for s in shares]})


async def revoke_share(request, share_id):
    owner = await page_caller(request)
    await sync_to_async(sharing.revoke_share)(owner, share_id)
    return HttpResponse(status=204)


def shared_page(request, share_id):
    share = sharing.public_share(share_id)
    if share is None:
        raise Http404("No such shared conversation.")
    response = render(request, "chat/share.html", {"share": share, "data": {
        "title": share.title, "model": share.model, "created_at": share.created_at.isoformat(),
        "messages": share.messages,
    }})
    response["X-Robots-Tag"] = NOINDEX
    response["Referrer-Policy"] = "no-referrer"  # the link's id is its secret
    response["Cache-Control"] = "private, no-store"  # a revoked link must not live on in caches
    return response


urlpatterns = [
    path("api/conversations/<str:conversation_id>/shares", methods(GET=list_shares, POST=create_share),
         name="conversation-shares"),
    path("api/shares/<str:share_id>", methods(DELETE=revoke_share), name="share"),
    path("s/<str:share_id>", shared_page, name="shared"),
]
