"""Shared helpers for the security suite: the error envelope, superuser reads, audit counts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import psycopg
from django.conf import settings

from tests.conftest import _admin_db_url, _test_db_name

DENIAL_ACTIONS = ("access.denied", "api_key.use_denied")
REFUSED_STATUSES = (401, 403, 404)


def assert_error_shape(response: Any, status: int | None = None, *, fields: Iterable[str] = ()) -> dict[str, Any]:
    """The response is the API error envelope (optionally with ``status`` and these field errors)."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.content[:500])
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) <= {"code", "message", "fields"} and {"code", "message"} <= set(error), error
    assert isinstance(error["code"], str) and error["code"] and isinstance(error["message"], str), error
    for name in fields:
        assert name in error.get("fields", {}), (name, error)
    return error


def admin_connect() -> psycopg.Connection:
    """A superuser connection to the test database (bypasses RLS; sees committed rows only)."""
    return psycopg.connect(_admin_db_url(_test_db_name()), autocommit=True)


def app_conninfo() -> str:
    """libpq connection string for the application role (NOSUPERUSER, NOBYPASSRLS) on the test DB."""
    db = settings.DATABASES["default"]
    parts = {
        "dbname": db["NAME"],
        "user": db["USER"],
        "password": db["PASSWORD"],
        "host": db["HOST"],
        "port": db["PORT"],
    }
    return " ".join(f"{k}='{v}'" for k, v in parts.items() if v not in (None, ""))


def app_connect(**kwargs: Any) -> psycopg.Connection:
    return psycopg.connect(app_conninfo(), **kwargs)


def tenant_tables(conn: psycopg.Connection) -> list[str]:
    """Every table in ``public`` that has a ``tenant_id`` column."""
    rows = conn.execute(
        """
        SELECT c.relname FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
         ORDER BY c.relname
        """
    ).fetchall()
    return [r[0] for r in rows]


def denial_count(conn: psycopg.Connection) -> int:
    """Committed denial events (access.denied, api_key.use_denied) in all chains."""
    return int(
        conn.execute("SELECT count(*) FROM audit_auditevent WHERE action = ANY(%s)", [list(DENIAL_ACTIONS)]).fetchone()[
            0
        ]
    )
