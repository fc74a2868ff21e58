"""Reads of the audit log: filtered lists, and rows for chain verification."""

from __future__ import annotations

import queue
import threading
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
    *, chain: str | None = None, table: str = "audit_auditevent", using: str = "default", batch: int = 5000
) -> Iterator[Row]:
    """Stream rows ordered by (chain, seq) through a server-side cursor (constant memory: a few
    batches). The next batch is fetched by a helper thread while the caller works on the current
    one, so PostgreSQL produces rows while Python hashes them."""
    conn = connections[using]
    conn.ensure_connection()
    raw = conn.connection
    where = "WHERE chain = %s" if chain else ""
    params = [chain] if chain else []
    # A named (server-side) cursor; binary results: the same Python values, less to parse.
    with raw.cursor(name=f"audit_verify_{id(raw)}", binary=True) as cur:
        cur.execute(f"SELECT {_VERIFY_COLUMNS} FROM {table} {where} ORDER BY chain, seq", params)
        yield from _prefetched(cur, batch)


def _prefetched(cur: Any, batch: int) -> Iterator[Row]:
    """Rows of ``cur`` in order; a daemon thread keeps up to two batches fetched ahead. Only that
    thread touches the cursor until it has stopped (psycopg connections are thread-safe)."""
    ahead: queue.Queue[list[Row] | BaseException] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def fetch() -> None:
        try:
            while not stop.is_set():
                rows = cur.fetchmany(batch)
                ahead.put(rows)
                if not rows:
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            ahead.put(exc)

    worker = threading.Thread(target=fetch, name="audit-verify-fetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ahead.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            yield from item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a pending put, then let the thread finish its fetch
            try:
                ahead.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()
