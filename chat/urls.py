"""Each protocol adapter owns its URL list; this file only gathers them."""

from django.urls import include, path

urlpatterns = [
    path("", include("chat.views.pages")),
    path("", include("chat.views.seed")),
    path("", include("chat.views.openai")),
    path("", include("chat.views.conversations")),
    path("", include("chat.views.tree")),
    path("", include("chat.views.search")),
    path("", include("chat.views.shares")),
    path("", include("chat.views.accounts")),
    path("", include("chat.views.ops")),
]
