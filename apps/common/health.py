"""Liveness (/healthz) and readiness (/readyz: database, Redis, broker)."""

from __future__ import annotations

import time

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check(fn: object) -> dict[str, object]:
    start = time.perf_counter()
    try:
        fn()  # type: ignore[operator]
        return {"ok": True, "ms": round((time.perf_counter() - start) * 1000, 2)}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}


def _db() -> None:
    with connections["default"].cursor() as cur:
        cur.execute("SELECT 1")


def _redis() -> None:
    import redis

    redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()


def _broker() -> None:
    from config.celery_app import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check(_db), "redis": _check(_redis), "broker": _check(_broker)}
    ok = all(c["ok"] for c in checks.values())
    return JsonResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)
