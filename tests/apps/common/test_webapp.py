"""The web app's page (``apps.common.webapp``): served at / and at every /app/… route with a strict
CSP and no caching; without a build, a 503 page that says how to build it (never a blank page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_built_page_is_served_at_the_root_and_every_app_route(settings: Any, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text('<!doctype html><div id="root"></div><script src="/static/app/a.js"></script>')
    settings.COHORT_WEBAPP_DIST = tmp_path
    client = Client()
    for path in ("/", "/app/", "/app/t/st-marys/federations/3"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert b'<div id="root">' in r.content
        assert r["Cache-Control"] == "no-cache"
        csp = r["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
        assert "connect-src 'self' ws://testserver wss://testserver;" in csp  # this host's socket only
        assert "csrftoken" in r.cookies  # the app's first POST has its token
    assert client.post("/app/").status_code == 405


def test_without_a_build_the_page_says_how_to_make_one(settings: Any, tmp_path: Path) -> None:
    settings.COHORT_WEBAPP_DIST = tmp_path / "missing"
    r = Client().get("/app/t/x/federations")
    assert r.status_code == 503
    assert b"scripts/frontend.py build" in r.content and b"make run" in r.content


def test_api_paths_keep_their_json_404(settings: Any) -> None:
    r = Client().get("/api/v1/no-such-thing/")
    assert r.status_code == 404 and r.json()["error"]["code"]
