"""API-2: login lockout under a parallel burst. 100 simultaneous wrong-password attempts on one account
(100 threads, each with its own client and database connection) may reach the password check at most
L = COHORT_LOGIN_MAX_FAILURES times (pass bar: checks / L <= 1.1); every other attempt is answered
429 ``login_locked``, and the audit log holds one ``auth.login_failed`` per check and one
``auth.login_locked`` per refusal. Report: reports/API-2.json.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from rest_framework.test import APIClient

from tests.conftest import write_report
from tests.security.helpers import admin_connect

pytestmark = pytest.mark.django_db(transaction=True)

ATTEMPTS = 100
# The 100 threads are released together, but at most this many hold a database connection at once:
# the shared PostgreSQL allows 100 connections in all, and other suites run beside this one.
DB_CONCURRENCY = 20


def _events(action: str) -> int:
    with admin_connect() as conn:
        return int(conn.execute("SELECT count(*) FROM audit_auditevent WHERE action = %s", [action]).fetchone()[0])


def test_api2_parallel_login_burst_respects_lockout(make_user: Callable[..., Any]) -> None:
    limit = settings.COHORT_LOGIN_MAX_FAILURES
    assert limit == 5
    user = make_user(email="burst-target@example.org")
    failed_before, locked_before = _events("auth.login_failed"), _events("auth.login_locked")

    # Prepare every client (CSRF cookie + token) first, then release all attempts at once.
    clients = []
    for i in range(ATTEMPTS):
        # Distinct source addresses: the per-IP limit must not be what stops the burst.
        c = APIClient(enforce_csrf_checks=True, REMOTE_ADDR=f"10.1.{i // 250}.{i % 250 + 1}")
        c.credentials(HTTP_X_CSRFTOKEN=c.get("/api/v1/auth/csrf/").json()["csrf_token"])
        clients.append(c)
    barrier = threading.Barrier(ATTEMPTS)
    db_slots = threading.BoundedSemaphore(DB_CONCURRENCY)
    results: list[Any] = [None] * ATTEMPTS

    def attempt(i: int) -> None:
        barrier.wait(timeout=60)
        with db_slots:
            try:
                r = clients[i].post(
                    "/api/v1/auth/login/", {"email": user.email, "password": "wrong-password!"}, format="json"
                )
                results[i] = (r.status_code, r.json()["error"]["code"], r.get("Retry-After"))
            except Exception as exc:  # recorded and asserted below
                results[i] = (0, repr(exc), None)
            finally:
                connections.close_all()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(ATTEMPTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    codes = Counter((r[0], r[1]) for r in results if r)
    failed = _events("auth.login_failed") - failed_before
    locked_events = _events("auth.login_locked") - locked_before
    rejected_401 = codes[(401, "invalid_credentials")]
    locked_429 = codes[(429, "login_locked")]
    # Even the right password is refused while the account is locked.
    c = APIClient(enforce_csrf_checks=True, REMOTE_ADDR="10.9.9.9")
    c.credentials(HTTP_X_CSRFTOKEN=c.get("/api/v1/auth/csrf/").json()["csrf_token"])
    right = c.post("/api/v1/auth/login/", {"email": user.email, "password": "correct-horse-battery"}, format="json")

    ratio = failed / limit
    figures = {
        "attempts": ATTEMPTS,
        "threads": ATTEMPTS,
        "max_concurrent_db_connections": DB_CONCURRENCY,
        "limit_L": limit,
        "password_checks": failed,
        "checks_over_limit_ratio": round(ratio, 3),
        "answered_401_invalid_credentials": rejected_401,
        "answered_429_locked": locked_429,
        "login_locked_events": locked_events,
        "other_outcomes": {
            f"{s} {c}": n
            for (s, c), n in codes.items()
            if (s, c) not in {(401, "invalid_credentials"), (429, "login_locked")}
        },
        "retry_after_present_on_429": all(r[2] for r in results if r and r[0] == 429),
        "correct_password_while_locked": right.status_code,
        "how": "password checks = auth.login_failed events (the hasher ran); distinct REMOTE_ADDR per attempt",
    }
    ok = (
        ratio <= 1.1
        and rejected_401 == failed
        and locked_429 == locked_events
        and rejected_401 + locked_429 == ATTEMPTS
        and right.status_code == 429
    )
    write_report("API-2", figures, ok)
    assert rejected_401 + locked_429 == ATTEMPTS, codes
    assert ratio <= 1.1, figures
    assert rejected_401 == failed and locked_429 == locked_events, figures
    assert right.status_code == 429
