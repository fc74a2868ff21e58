"""ASGI entry point: HTTP through Django, websockets through Channels (an API key, or a session
behind the Origin check: ``apps.accounts.websocket``)."""

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from apps.accounts.websocket import ApiKeyOrSessionMiddleware  # noqa: E402
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
        "websocket": ApiKeyOrSessionMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
