"""WSGI entry point: the REST API, the console, the admin and static files (gunicorn).

Websockets (``/ws/...``) are not served here: ``config.asgi`` (uvicorn) serves them, behind the same
port through ``scripts/router.py`` (``make run``) or a reverse proxy (``deploy/``). Like the ASGI
entry point, it refuses to serve as a role that row-level security cannot hold.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()

from apps.tenancy.db import assert_safe_app_role  # noqa: E402

assert_safe_app_role()
