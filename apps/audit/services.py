"""Writing the audit log: ``audit_record`` (one event) and ``audited_change`` (declares that a
service records its own event, so row-capture triggers stay quiet for that change)."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import connections, transaction

from apps.common.context import Actor, get_context
from apps.tenancy.scope import db_alias, get_db_context, set_db_context

_SECRET_KEY_RE = re.compile(r"(password|secret|token|api_key|apikey|private|credential)", re.I)
_MAX_DETAILS = 8192


class AuditDetailsError(ValueError):
    """Details that must never be written to the audit log (secrets, bad values, too big)."""


def _check_details(value: Any, path: str = "") -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditDetailsError(f"details key at {path!r} is not a string")
            if _SECRET_KEY_RE.search(key) and not key.endswith(("_prefix", "_id", "_count")):
                raise AuditDetailsError(f"details key {path + key!r} looks like a secret")
            _check_details(item, f"{path}{key}.")
    elif isinstance(value, list | tuple):
        for item in value:
            _check_details(item, path)
    elif isinstance(value, float) and not math.isfinite(value):
        raise AuditDetailsError("details contain a non-finite number")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise AuditDetailsError(f"details value of type {type(value).__name__} is not JSON")


def canonical_details(details: Mapping[str, Any] | None) -> str:
    data = dict(details or {})
    _check_details(data)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if len(text) > _MAX_DETAILS:
        raise AuditDetailsError("details too large")
    return text


_records_in_change: ContextVar[list[int] | None] = ContextVar("cohort_audit_change", default=None)


def _tenant_id(tenant: object) -> int | None:
    if tenant is None:
        return None
    if isinstance(tenant, int):
        return tenant
    return int(tenant.pk)  # type: ignore[attr-defined]


def audit_record(
    *,
    action: str,
    tenant: object = None,
    actor: Actor | None = None,
    target: object = None,
    target_type: str | None = None,
    target_id: object = None,
    outcome: str = "success",
    details: Mapping[str, Any] | None = None,
    using: str | None = None,
) -> int:
    """Append one event to the tenant's chain (or the platform chain when ``tenant`` is None).

    Runs in the caller's transaction: if the caller rolls back, the event goes too, and if the
    append fails the caller's change fails with it. Returns the event's sequence number.
    """
    using = using or db_alias()  # the connection of the change it records (platform scope or not)
    ctx = get_context()
    who = actor or ctx.actor
    if target is not None:
        target_type = target_type or f"{target._meta.app_label}.{target._meta.model_name}"  # type: ignore[attr-defined]
        target_id = target_id if target_id is not None else target.pk  # type: ignore[attr-defined]
    params = [
        _tenant_id(tenant),
        who.type,
        who.id,
        (who.label or None) and who.label[:255],
        action,
        # target_id can come from the request (an unknown tenant slug): cut it to the column's 100.
        target_type,
        None if target_id is None else str(target_id)[:100],
        outcome,
        ctx.request_id,
        ctx.source_ip,
        ctx.user_agent,
        canonical_details(details),
    ]
    with connections[using].cursor() as cur:
        cur.execute("SELECT cohort_audit_append(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", params)
        seq = int(cur.fetchone()[0])
    pending = _records_in_change.get()
    if pending is not None:
        pending.append(seq)
    tid = _tenant_id(tenant)
    if tid is not None:
        _publish_after_commit(
            tid, seq, action, outcome, who, target_type, None if target_id is None else str(target_id), using
        )
    return seq


def audit_record_both(
    *,
    actions: tuple[str, str],
    tenants: tuple[object, object],
    target: object = None,
    target_type: str | None = None,
    target_id: object = None,
    details: Mapping[str, Any] | None = None,
    counterparts: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {}),
    outcome: str = "success",
) -> tuple[int, int]:
    """One event between two tenants, recorded on both tenants' chains in the caller's transaction
    (a grant given and received, a shared read and the owner's view of it, a federation round).

    ``actions[i]`` goes to ``tenants[i]``'s chain with ``details`` plus ``counterparts[i]`` (what
    that side is told about the other, e.g. ``{"owner": slug}``). Both appends succeed or the
    caller's change fails: neither tenant can hold a record the other lacks."""
    seqs = tuple(
        audit_record(
            action=action,
            tenant=tenant,
            target=target,
            target_type=target_type,
            target_id=target_id,
            outcome=outcome,
            details={**(details or {}), **extra},
        )
        for action, tenant, extra in zip(actions, tenants, counterparts, strict=True)
    )
    return seqs[0], seqs[1]


def _publish_after_commit(
    tenant_id: int,
    seq: int,
    action: str,
    outcome: str,
    actor: Actor,
    target_type: str | None,
    target_id: str | None,
    using: str,
) -> None:
    from django.utils import timezone

    from apps.audit.live import has_listeners, publish_audit_event

    # A summary (no details, no PHI), numbered by the tenant's chain: the activity stream
    # (apps.audit.consumers.ActivityStream) replays the same fields from the log.
    event = {
        "seq": seq,
        "action": action,
        "outcome": outcome,
        "actor_type": actor.type,
        "actor_label": (actor.label or None) and actor.label[:255],  # as the row keeps them
        "target_type": target_type,
        "target_id": None if target_id is None else target_id[:100],
        # The row's own time is the database's; this one is taken in the same transaction (a
        # replayed event shows the row's, which may differ by the transaction's length).
        "created_at": timezone.now().isoformat(),
    }

    def publish() -> None:
        if has_listeners(tenant_id):  # nobody watching: skip the thread hop and Redis round trips
            publish_audit_event(tenant_id, event)

    transaction.on_commit(publish, using=using)


class AuditMissing(AssertionError):
    """A service declared an audited change but recorded no event: the change is rolled back."""


@contextmanager
def audited_change(using: str | None = None) -> Iterator[None]:
    """Wrap a service's writes: atomic, row-capture triggers muted, and at least one
    ``audit_record`` required before the block ends (else the whole change rolls back).

    The mute is a MAC-signed setting (``apps.tenancy.scope``): SQL cannot set it by itself."""
    using = using or db_alias()
    with transaction.atomic(using=using):
        previous = get_db_context(using).get("app.audit_context", "")
        set_db_context(using=using, audit_context=get_context().request_id or uuid.uuid4().hex)
        records: list[int] = []
        token = _records_in_change.set(records)
        try:
            yield
            if not records:
                raise AuditMissing("audited_change ended without an audit_record")
        finally:
            _records_in_change.reset(token)
            conn = connections[using]
            if conn.in_atomic_block and not conn.needs_rollback:
                set_db_context(using=using, audit_context=previous or None)
