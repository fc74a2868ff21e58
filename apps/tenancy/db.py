"""Startup guard: the serving database role must be unable to bypass row-level security."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.db import connections


def app_role_flags(using: str = "default") -> dict[str, object]:
    """Flags of the role this connection runs as (used by the guard and by ISO-3)."""
    with connections[using].cursor() as cur:
        cur.execute(
            """
            SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,
                   EXISTS (SELECT 1 FROM pg_tables t WHERE t.schemaname = 'public'
                           AND t.tableowner = current_user) AS owns_tables
              FROM pg_roles r WHERE r.rolname = current_user
            """
        )
        name, superuser, bypass, createrole, createdb, owns = cur.fetchone()
    return {
        "role": name,
        "superuser": superuser,
        "bypassrls": bypass,
        "createrole": createrole,
        "createdb": createdb,
        "owns_tables": owns,
    }


def assert_safe_app_role(using: str = "default") -> None:
    """Raise ImproperlyConfigured unless this serving process is least-privileged: the app role (and
    the platform role, when configured) can be held by RLS, and no owner DSN is configured (the owner
    DSN belongs to the migrate step alone)."""
    from django.conf import settings

    if "owner" in settings.DATABASES and not getattr(settings, "COHORT_ALLOW_OWNER_DSN", False):
        raise ImproperlyConfigured(
            "refusing to serve: DATABASE_OWNER_URL is set; the owner DSN is for the migrate step only "
            "(`manage.py migrate --database owner`), never for web, worker or beat processes"
        )
    aliases = [using]
    if "platform" in settings.DATABASES and not getattr(settings, "COHORT_PLATFORM_SHARED_CONNECTION", False):
        aliases.append("platform")
    for alias in aliases:
        flags = app_role_flags(alias)
        bad = [k for k in ("superuser", "bypassrls", "owns_tables") if flags[k]]
        connections[alias].close()
        if bad:
            raise ImproperlyConfigured(
                f"refusing to serve: database role {flags['role']!r} ({alias}) is {', '.join(bad)}; "
                "connect as the application role (DATABASE_URL) and the platform role "
                "(DATABASE_PLATFORM_URL), and migrate as the owner (DATABASE_OWNER_URL, "
                "`manage.py migrate --database owner`)"
            )
