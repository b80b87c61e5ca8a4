"""WebSocket URL patterns (the consumer lives in chat/consumers/)."""

websocket_urlpatterns = []
