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


def test_the_build_gzips_its_text_assets_and_whitenoise_serves_them_in_debug_mode(tmp_path: Path) -> None:
    """``scripts/frontend.py`` writes ``<asset>.gz`` beside the assets it built (not small files,
    not binaries, the same bytes every time); WhiteNoise in autorefresh mode (``make run``: DEBUG,
    the app found in frontend/dist) sends it to a browser that accepts gzip."""
    import gzip
    import io
    import sys

    from whitenoise import WhiteNoise

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
    try:
        import frontend
    finally:
        sys.path.pop(0)
    assets = tmp_path / "assets"
    assets.mkdir()
    js = b"export const rows = [" + b", ".join(b'{"site": %d}' % i for i in range(400)) + b"];\n"
    (assets / "index-abc.js").write_bytes(js)
    (assets / "tiny.css").write_bytes(b"a{}")
    (assets / "logo.png").write_bytes(bytes(range(256)) * 8)
    written = frontend.precompress(tmp_path)
    assert written == [assets / "index-abc.js.gz"]
    first = (assets / "index-abc.js.gz").read_bytes()
    assert gzip.decompress(first) == js and len(first) < len(js) / 3
    frontend.precompress(tmp_path)
    assert (assets / "index-abc.js.gz").read_bytes() == first  # no timestamp: a rebuild writes the same bytes

    app = WhiteNoise(lambda environ, start: [], autorefresh=True)
    app.add_files(str(tmp_path), prefix="static/app/")

    def get(encoding: str) -> tuple[dict[str, str], bytes]:
        got: dict[str, str] = {}

        def start(status: str, headers: list[tuple[str, str]]) -> None:
            got.update(headers)
            got["status"] = status

        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/static/app/assets/index-abc.js", "QUERY_STRING": "",
                   "HTTP_ACCEPT_ENCODING": encoding, "wsgi.input": io.BytesIO(), "SERVER_NAME": "t",
                   "SERVER_PORT": "80", "wsgi.url_scheme": "http"}  # fmt: skip
        body = b"".join(app(environ, start))
        return got, body

    headers, body = get("gzip, deflate, br")
    assert headers["status"].startswith("200") and headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(body) == js
    headers, body = get("identity")
    assert "Content-Encoding" not in headers and body == js
