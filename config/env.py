"""Environment reading: one place that turns env vars (and `.cohort/env`) into typed settings."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
LOCAL_STATE_DIR = Path(os.environ.get("COHORT_STATE_DIR", BASE_DIR / ".cohort"))

env = environ.Env()
# `.cohort/env` is written by `scripts/services.py` (embedded services, generated dev secrets).
# Real environment variables always win over it.
_local_env = LOCAL_STATE_DIR / "env"
if _local_env.exists():
    env.read_env(str(_local_env), overwrite=False)


def parse_database_url(url: str) -> dict[str, object]:
    """Parse a postgres URL (TCP host or `?host=/socket/dir`) into a Django DATABASES entry."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ValueError(f"unsupported database scheme {parts.scheme!r}: Cohort needs PostgreSQL")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    host = query.pop("host", None) or unquote(parts.hostname or "")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(parts.port or ""),
        "OPTIONS": dict(query),
    }
