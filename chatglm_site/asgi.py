"""ASGI entry point: HTTP through Django, WebSocket through Channels (run by Daphne)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatglm_site.settings")
# Django must be set up before the routing imports the consumers and their models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.metrics import AccessLog  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from chat.ws_origin import SameOriginOrApiKey  # noqa: E402

# AccessLog: metrics, the access log and the request id for every request (chat/metrics.py).
application = AccessLog(ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The Origin is checked before the session is read: a foreign page never gets that far.
        "websocket": SameOriginOrApiKey(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
))

# Body size, sockets per client and the client's address for rate limits (chat/asgi_limits.py).
from chat.asgi_limits import ResourceLimits  # noqa: E402

application = ResourceLimits(application)
