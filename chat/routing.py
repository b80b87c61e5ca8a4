"""WebSocket URL patterns (the consumer lives in chat/consumers/; docs/websocket.md)."""

from django.urls import path

from .consumers.chat import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi(), name="ws-chat"),
]
