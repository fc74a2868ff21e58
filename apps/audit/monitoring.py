"""Scheduled verification of every audit chain (beat ``audit.verify_all``) and its latest result,
which ``/readyz`` and the compliance console read.

The result is written twice: as a platform audit event (``audit.verified``, or
``audit.chain_broken`` with outcome ``error``: the durable record) and as a Redis key (what a probe
reads cheaply). Neither needs the signing key: web reads the key, or on a miss the newest such event.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache import cache
from django.utils import timezone

from apps.audit.models import AuditCheckpoint
from apps.audit.services import audit_record
from apps.audit.status import ACTION_BROKEN, ACTION_OK, ACTOR_LABEL, STATUS_CACHE_KEY
from apps.audit.verification import CheckpointError, KeyMissing, audit_verify, checkpoint_load, key_id
from apps.audit.verification import trusted_public_key as _trusted_public_key
from apps.common.context import Actor
from apps.tenancy.scope import platform_scope

log = logging.getLogger(__name__)

_MAX_PROBLEMS = 50


def _latest_checkpoint() -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The newest stored checkpoint, if its signature verifies with the trusted public key, and a
    note on what was used. A stored checkpoint whose signature does not verify is a forgery."""
    row = AuditCheckpoint.objects.order_by("-id").first()
    if row is None:
        return None, {"used": False, "reason": "none stored"}
    try:
        trusted = _trusted_public_key()
    except KeyMissing:
        return None, {"used": False, "reason": "no public key configured", "checkpoint_id": row.pk}
    if row.key_id != key_id(trusted):  # signed by an earlier (rotated) key: not checkable here
        return None, {"used": False, "reason": "signed by another key", "checkpoint_id": row.pk}
    try:
        data = checkpoint_load({"payload": row.payload, "signature": row.signature}, trusted_public_key_b64=trusted)
    except CheckpointError:
        return None, {"used": False, "reason": "signature does not verify", "checkpoint_id": row.pk, "forged": True}
    return data, {"used": True, "checkpoint_id": row.pk, "created_at": data.get("created_at")}


def verify_all_chains() -> dict[str, Any]:
    """Verify every chain as the platform (against the newest stored checkpoint that verifies),
    record the outcome as a platform event and store it as the latest status. Returns the status.

    The event's details name chains, positions, problem kinds and event ids only (never an
    event's contents: no PHI)."""
    checked_at = timezone.now()
    with platform_scope():
        checkpoint, cp_note = _latest_checkpoint()
        result = audit_verify(checkpoint=checkpoint)
        problems = [{"chain": p.chain, "seq": p.seq, "kind": p.kind, "event_id": p.event_id} for p in result.problems]
        if cp_note.get("forged"):
            problems.append({"chain": "checkpoints", "seq": None, "kind": "checkpoint_forged", "event_id": None})
        broken = sorted({str(p["chain"]) for p in problems})
        ok = not problems
        status = {
            "ok": ok,
            "checked_at": checked_at.isoformat(),
            "broken_chains": broken,
            "num_chains": len(result.chains),
            "num_events": result.num_events,
            "checkpoint": cp_note,
        }
        audit_record(
            action=ACTION_OK if ok else ACTION_BROKEN,
            tenant=None,
            actor=Actor.system(ACTOR_LABEL),
            target_type="audit.auditevent",
            outcome="success" if ok else "error",
            details={**status, "scope": "all", "problems": problems[:_MAX_PROBLEMS]},
        )
    if not ok:
        log.error("audit chain verification found tampering in %s", ", ".join(broken))
    _store(status)
    return status


def _store(status: dict[str, Any]) -> None:
    try:
        cache.set(STATUS_CACHE_KEY, status, timeout=None)
    except Exception:  # Redis down: the platform event is the record; readers fall back to it
        log.warning("could not cache the audit chain status", exc_info=True)
