"""Reads of the audit log: filtered lists, and rows for chain verification."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.db import connections
from django.db.models import QuerySet

from apps.audit.chain import Row
from apps.audit.models import AuditEvent

FILTERS = ("action", "outcome", "actor_type", "actor_id", "target_type", "target_id", "request_id")


def audit_event_list(*, tenant: Any, filters: dict[str, Any] | None = None) -> QuerySet[AuditEvent]:
    """Events of ``tenant`` (scoped manager + RLS), filtered by exact fields and a time range."""
    qs = AuditEvent.objects.filter(tenant=tenant)
    return apply_filters(qs, filters or {})


def apply_filters(qs: QuerySet[AuditEvent], filters: dict[str, Any]) -> QuerySet[AuditEvent]:
    for name in FILTERS:
        value = filters.get(name)
        if value not in (None, ""):
            qs = qs.filter(**{name: value})
    if filters.get("action_prefix"):
        qs = qs.filter(action__startswith=filters["action_prefix"])
    since: datetime | None = filters.get("since")
    until: datetime | None = filters.get("until")
    if since:
        qs = qs.filter(created_at__gte=since)
    if until:
        qs = qs.filter(created_at__lt=until)
    return qs


_VERIFY_COLUMNS = """
    id, chain, seq, prev_hash, hash, (extract(epoch FROM created_at) * 1000000)::bigint,
    tenant_id, actor_type, actor_id, actor_label, action, target_type, target_id, outcome,
    request_id, source_ip, user_agent, details
"""


def iter_chain_rows(
    *, chain: str | None = None, table: str = "audit_auditevent", using: str = "default", batch: int = 20000
) -> Iterator[Row]:
    """Stream rows ordered by (chain, seq) through a server-side cursor (constant memory)."""
    conn = connections[using]
    conn.ensure_connection()
    raw = conn.connection
    where = "WHERE chain = %s" if chain else ""
    params = [chain] if chain else []
    with raw.cursor(name=f"audit_verify_{id(raw)}") as cur:  # psycopg named cursor = server-side
        cur.itersize = batch
        cur.execute(f"SELECT {_VERIFY_COLUMNS} FROM {table} {where} ORDER BY chain, seq", params)
        yield from cur


def chain_heads(*, chain: str | None = None, using: str = "owner") -> dict[str, tuple[int, str]]:
    """Chain heads (readable by the owner only; the app role gets them through a function)."""
    with connections[using].cursor() as cur:
        if chain:
            cur.execute("SELECT chain, seq, head_hash FROM audit_chainhead WHERE chain = %s", [chain])
        else:
            cur.execute("SELECT chain, seq, head_hash FROM audit_chainhead")
        return {c: (int(s), h) for c, s, h in cur.fetchall()}
