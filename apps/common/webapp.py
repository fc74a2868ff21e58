"""Serves the analysts' web app (``frontend/``): its ``index.html`` at ``/`` and at every client
route under ``/app/`` (the app routes in the browser); the hashed assets it loads are static files
under ``/static/app/`` (``settings.STATICFILES_DIRS``). Without a build, a page that says how to
make one (``make run`` builds it; ``python scripts/frontend.py build`` alone)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

NOT_BUILT = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Cohort</title></head>
<body><main><h1>The web app is not built</h1><p>Run <code>make run</code>, or
<code>.venv/bin/python scripts/frontend.py build</code>, then reload. The REST API is at
<a href="/api/docs/">/api/docs/</a>.</p></main></body></html>"""


@require_GET
@ensure_csrf_cookie
def index(request: HttpRequest, path: str = "") -> HttpResponse:
    page = settings.COHORT_WEBAPP_DIST / "index.html"
    try:
        html = page.read_text(encoding="utf-8")
    except OSError:
        return HttpResponse(NOT_BUILT, status=503, content_type="text/html; charset=utf-8")
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    # The page names its hashed assets: it must never be cached past a new build.
    response["Cache-Control"] = "no-cache"
    # The page's own origin only: its REST calls and its websocket (named by host: not every
    # browser counts ws(s):// of the page's host as 'self'). uPlot sets inline styles.
    host = request.get_host()
    response["Content-Security-Policy"] = (
        f"default-src 'self'; connect-src 'self' ws://{host} wss://{host}; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    )
    return response
