"""Liveness (/healthz) and readiness (/readyz: database, Redis, broker, and the audit chains).

``checks.audit_chain`` is the latest scheduled verification of every audit chain (beat
``audit.verify_all``): ``{"ok", "checked_at", "broken_chains", "stale"}``; ``ok`` is null before the
first run. While the last run found tampering, /readyz answers 503 with status ``tampered``
(``COHORT_AUDIT_TAMPER_FAILS_READYZ=false``: reported, status stays ``ok``). See docs/audit.md."""

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


def _audit_chain() -> dict[str, object]:
    from apps.audit.status import latest_status

    try:
        status = latest_status()
    except Exception as exc:  # the status is unreadable (database down): say so, decide nothing
        return {"ok": None, "error": type(exc).__name__}
    if status is None:
        return {"ok": None, "checked_at": None, "broken_chains": [], "stale": False}
    return {k: status.get(k) for k in ("ok", "checked_at", "broken_chains", "stale")}


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check(_db), "redis": _check(_redis), "broker": _check(_broker)}
    ok = all(c["ok"] for c in checks.values())
    checks["audit_chain"] = audit = _audit_chain()
    tampered = audit["ok"] is False and settings.COHORT_AUDIT_TAMPER_FAILS_READYZ
    status = "unavailable" if not ok else "tampered" if tampered else "ok"
    return JsonResponse({"status": status, "checks": checks}, status=200 if status == "ok" else 503)
