"""ASGI entry point: HTTP through Django, websockets through Channels (origin-checked, session auth)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from apps.tenancy.db import assert_safe_app_role  # noqa: E402
from config.routing import websocket_urlpatterns  # noqa: E402

# Refuse to serve as a superuser, a BYPASSRLS role or the owner of the tables.
assert_safe_app_role()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
