"""Test wiring: a real PostgreSQL test database (owner migrates, app role serves) and real Redis.

Fixtures (STYLE §8): ``tenant``, ``other_tenant``, ``member(role, tenant=...)``,
``api_client_for(user_or_key)``, ``api_key_for(tenant, scopes)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connections
from django.test import TransactionTestCase
from psycopg import sql
from rest_framework.test import APIClient

from scripts.cohort import APP_ROLE, OWNER_ROLE, PLATFORM_ROLE, prepare_schema, with_credentials

# Unit tests run in one transaction each, which a second connection cannot see: the default
# connection logs in as this role (a NOINHERIT member of the app and platform roles), starts as the
# app role, and platform_scope switches with SET LOCAL ROLE (apps.tenancy.scope). Production and
# the end-to-end tests use the platform role's own login and connection.
TEST_LOGIN_ROLE = "cohort_test_login"

REPORTS_DIR = Path(os.environ.get("COHORT_REPORTS_DIR", Path(__file__).resolve().parent.parent / "reports"))


def write_report(report_id: str, figures: dict[str, Any], passed: bool) -> Path:
    """Write ``reports/<ID>.json`` with the figures a RELIABILITY test measured."""
    REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    path = REPORTS_DIR / f"{report_id}.json"
    path.write_text(json.dumps({"id": report_id, "figures": figures, "pass": bool(passed)}, indent=2, default=str))
    return path


def _admin_url() -> str:
    url = os.environ.get("COHORT_DB_ADMIN_URL")
    if not url:
        pytest.exit("COHORT_DB_ADMIN_URL is not set: run the suite through `make test`", returncode=2)
    return url


def _test_db_name() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return os.environ.get("COHORT_TEST_DB", "cohort_test") + (f"_{worker}" if worker else "")


def _admin_db_url(dbname: str) -> str:
    from urllib.parse import urlsplit

    admin = _admin_url()
    parts = urlsplit(admin)
    return with_credentials(admin, user=parts.username or "postgres", password=parts.password or "", dbname=dbname)


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker: Any) -> Iterator[None]:
    """Create the test database owned by the owner role, migrate as the owner, serve as the app."""
    from django.core.management import call_command

    name = _test_db_name()
    import shutil

    for key in ("COHORT_KEY_DIR", "COHORT_OBJECT_DIR", "COHORT_TMP_DIR", "COHORT_CHECKPOINT_DIR"):
        shutil.rmtree(getattr(settings, key), ignore_errors=True)  # keys and objects of a previous run
    with psycopg.connect(_admin_url(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                sql.Identifier(name), sql.Identifier(OWNER_ROLE)
            )
        )
    prepare_schema(_admin_db_url(name))
    _use_shared_test_login(name)
    for alias in ("default", "owner", "platform"):
        settings.DATABASES[alias]["NAME"] = name
        connections[alias].settings_dict["NAME"] = name
        connections[alias].close()
    with django_db_blocker.unblock():
        call_command("migrate", database="owner", verbosity=0, interactive=False)
        connections["owner"].close()
    yield
    for alias in ("default", "owner", "platform"):
        connections[alias].close()


def _use_shared_test_login(dbname: str) -> None:
    app = settings.DATABASES["default"]
    password = str(app["PASSWORD"] or "")
    with psycopg.connect(_admin_url(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (TEST_LOGIN_ROLE,)).fetchone()
        conn.execute(
            sql.SQL("{} ROLE {} LOGIN NOINHERIT NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(TEST_LOGIN_ROLE), sql.Literal(password)
            )
        )
        for role in (APP_ROLE, PLATFORM_ROLE):
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(TEST_LOGIN_ROLE)))
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(dbname), sql.Identifier(TEST_LOGIN_ROLE)
            )
        )
    # Keep the real app login for child processes (tests/e2e) and raw-connection tests (ISO-12).
    settings.COHORT_TEST_APP_LOGIN = {"USER": app["USER"], "PASSWORD": app["PASSWORD"]}
    app["USER"] = TEST_LOGIN_ROLE
    options = dict(app.get("OPTIONS") or {})
    options["options"] = f"-c role={APP_ROLE}"
    app["OPTIONS"] = options
    connections["default"].settings_dict.update({"USER": TEST_LOGIN_ROLE, "OPTIONS": options})
    settings.COHORT_PLATFORM_SHARED_CONNECTION = True


def _reset_all_tables() -> None:
    """Replace pytest-django's flush (TRUNCATE as the app role, which may not and must not) with a
    superuser TRUNCATE that bypasses the append-only triggers, for transactional tests only."""
    url = _admin_db_url(_test_db_name())
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename NOT IN ('django_migrations', 'cohort_context_key')"
            )
        ]
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in tables)
            )
        )
        conn.execute("RESET session_replication_role")


def _fixture_teardown(self: TransactionTestCase) -> None:
    for alias in connections:
        connections[alias].close()
    _reset_all_tables()
    _reset_key_and_object_stores()


def _reset_key_and_object_stores() -> None:
    """The tables were truncated (ids restart): tenant secrets and objects of the old rows must go
    too, or a new tenant with a reused id would inherit them."""
    import shutil

    from apps.vault.services import reset_caches

    for key in ("COHORT_OBJECT_DIR", "COHORT_TMP_DIR", "COHORT_CHECKPOINT_DIR"):
        shutil.rmtree(getattr(settings, key), ignore_errors=True)
    Path(settings.COHORT_KEY_DIR, "tenant-secrets.json").unlink(missing_ok=True)
    reset_caches()


TransactionTestCase._fixture_teardown = _fixture_teardown  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _clear_rate_limits() -> None:
    from apps.common.ratelimit import redis_client

    client = redis_client()
    keys = [*client.scan_iter("cohort:rl:*", count=1000), *client.scan_iter("cohort:live:*", count=1000)]
    if keys:
        client.delete(*keys)


# --- factories ------------------------------------------------------------------------------------

_counter = {"n": 0}


def _next(prefix: str) -> str:
    _counter["n"] += 1
    return f"{prefix}{os.getpid()}x{_counter['n']}"


@pytest.fixture
def make_user(db: None) -> Callable[..., Any]:
    from apps.accounts.models import User

    def make(email: str | None = None, password: str = "correct-horse-battery", **extra: Any) -> Any:
        from apps.audit.services import audit_record, audited_change

        with audited_change():
            user = User.objects.create_user(email=email or f"{_next('user')}@example.org", password=password, **extra)
            audit_record(action="user.created", target=user, details={"fixture": True})
        return user

    return make


@pytest.fixture
def make_tenant(db: None) -> Callable[..., Any]:
    from apps.tenancy.services import tenant_create

    def make(slug: str | None = None, name: str | None = None) -> Any:
        slug = slug or _next("t")
        return tenant_create(slug=slug, name=name or slug.upper())

    return make


@pytest.fixture
def tenant(make_tenant: Callable[..., Any]) -> Any:
    return make_tenant()


@pytest.fixture
def other_tenant(make_tenant: Callable[..., Any]) -> Any:
    return make_tenant()


@pytest.fixture
def member(make_user: Callable[..., Any], tenant: Any) -> Callable[..., Any]:
    """``member(role, tenant=...)`` → a new user holding ``role`` in the tenant."""
    from apps.audit.services import audit_record, audited_change
    from apps.tenancy.models import Membership
    from apps.tenancy.scope import tenant_scope

    def make(role: str, tenant: Any = tenant, **user_kwargs: Any) -> Any:
        user = make_user(**user_kwargs)
        with tenant_scope(tenant.pk), audited_change():
            m = Membership.objects.create(tenant=tenant, user=user, role=role)
            audit_record(action="member.added", tenant=tenant, target=m, details={"fixture": True})
        return user

    return make


@pytest.fixture
def api_key_for(make_user: Callable[..., Any]) -> Callable[..., str]:
    from apps.accounts.services import api_key_create
    from apps.tenancy.scope import tenant_scope

    def make(tenant: Any, scopes: tuple[str, ...] = ("read", "write"), **kwargs: Any) -> str:
        creator = make_user()
        with tenant_scope(tenant.pk):
            return api_key_create(
                tenant=tenant,
                created_by=creator,
                name=_next("key"),
                scopes=list(scopes),
                expires_at=kwargs.get("expires_at"),
            ).secret

    return make


@pytest.fixture
def api_client_for() -> Callable[[Any], APIClient]:
    """An APIClient signed in as a user (session, CSRF enforced) or using an API key string."""

    def make(principal: Any = None) -> APIClient:
        client = APIClient(enforce_csrf_checks=True)
        if isinstance(principal, str):
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {principal}")
        elif principal is not None:
            client.force_login(principal)
            # A real browser sends the CSRF cookie and header; fetch the token like the web app does.
            token = client.get("/api/v1/auth/csrf/").json()["csrf_token"]
            client.credentials(HTTP_X_CSRFTOKEN=token)
        return client

    return make


__all__ = ["APP_ROLE", "write_report"]
