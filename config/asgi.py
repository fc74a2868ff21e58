"""ASGI entry point: HTTP through Django, websockets through Channels (origin-checked, session auth)."""

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from apps.tenancy.db import assert_safe_app_role  # noqa: E402
from config.routing import websocket_urlpatterns  # noqa: E402


def _check_app_role() -> None:
    """Refuse to serve as a superuser, a BYPASSRLS role or the owner of the tables.

    ``uvicorn --workers N`` (and ``--reload``) import this module inside the worker's running event
    loop, where Django refuses synchronous database calls: run the check in a thread then.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        assert_safe_app_role()
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(assert_safe_app_role).result()


_check_app_role()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
