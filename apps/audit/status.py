"""The latest scheduled verification of every audit chain, as /readyz and the console read it (no
key, no verification code: a leaf that apps.common may import). Written by apps.audit.monitoring."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.utils import timezone

from apps.tenancy.scope import db_alias, platform_scope

log = logging.getLogger(__name__)

STATUS_CACHE_KEY = "cohort:audit:chain_status"
ACTOR_LABEL = "audit.verify_all"
ACTION_OK = "audit.verified"
ACTION_BROKEN = "audit.chain_broken"
_NEVER = {"never": True}  # cached "no verification recorded yet" (short-lived)
_NEVER_TTL = 60


def _status_from_log() -> dict[str, Any] | None:
    """The newest result recorded by ``verify_all_chains`` in the platform chain (platform scope)."""
    with platform_scope(), connections[db_alias()].cursor() as cur:
        cur.execute(
            "SELECT details FROM audit_auditevent WHERE chain = 'platform' AND action IN (%s, %s) "
            "AND actor_type = 'system' AND actor_label = %s ORDER BY seq DESC LIMIT 1",
            [ACTION_OK, ACTION_BROKEN, ACTOR_LABEL],
        )
        row = cur.fetchone()
    if row is None:
        return None
    details = json.loads(row[0])
    keys = ("ok", "checked_at", "broken_chains", "num_chains", "num_events", "checkpoint")
    return {k: details.get(k) for k in keys}


def latest_status() -> dict[str, Any] | None:
    """The latest verification of every chain (None: none recorded yet), with ``stale`` set when
    it is older than two scheduled intervals."""
    status: dict[str, Any] | None
    try:
        cached = cache.get(STATUS_CACHE_KEY)
    except Exception:
        cached = None
    if cached is not None:
        status = None if cached == _NEVER else dict(cached)
    else:
        status = _status_from_log()
        try:
            cache.set(STATUS_CACHE_KEY, status or _NEVER, timeout=None if status else _NEVER_TTL)
        except Exception:
            log.warning("could not cache the audit chain status", exc_info=True)
    if status is None:
        return None
    try:
        age = timezone.now() - datetime.fromisoformat(str(status["checked_at"]))
        status["stale"] = age > timedelta(seconds=2 * float(settings.COHORT_AUDIT_VERIFY_SECONDS))
    except (KeyError, TypeError, ValueError):
        status["stale"] = True
    return status
