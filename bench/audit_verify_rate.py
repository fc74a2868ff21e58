"""audit_verify_rate: full-log verification (audit_verify, every chain) vs merely streaming the same rows."""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from django.db import transaction
from psycopg import sql

from apps.audit.chain import GENESIS, event_hash
from apps.audit.selectors import iter_chain_rows
from apps.audit.verification import audit_verify
from apps.tenancy.scope import set_db_context
from bench.common import log, write_result

NAME = "audit_verify_rate"
CHAINS = 20  # tenant chains the seeded events are spread over
SLUG_PREFIX = "verify-bench-"
REPEATS = 3
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COPY_COLUMNS = (
    "tenant_id", "chain", "seq", "created_at", "actor_type", "actor_id", "actor_label", "action", "target_type",
    "target_id", "outcome", "request_id", "source_ip", "user_agent", "details", "prev_hash", "hash",
)  # fmt: skip

_ACTIONS = [
    ("member.role_changed", "tenancy.membership"), ("member.added", "tenancy.membership"),
    ("api_key.created", "accounts.apikey"), ("access.denied", None), ("invitation.created", "tenancy.invitation"),
    ("tenant.updated", "tenancy.tenant"), ("db.row_updated", "tenancy_membership"),
]  # fmt: skip
_LABELS = [f"user{i}@hospital.example" for i in range(40)] + ["Zoë Müller <zoe@klinik.example>", "李雷@lab.example"]


def _event(chain: str, tenant_id: int, seq: int, prev: str, us: int) -> tuple[Any, ...]:
    """One plausible event (fields as the verifier reads them, ``created_us`` in microseconds)."""
    k = seq * 2654435761 + tenant_id
    action, target_type = _ACTIONS[k % len(_ACTIONS)]
    label = _LABELS[k % len(_LABELS)]
    denied = action == "access.denied"
    details = json.dumps(
        {"reason": "role", "action": "member.add"} if denied else {"user_id": k % 5000, "from": "analyst",
                                                                      "to": "auditor"},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )  # fmt: skip
    actor_type = "database" if action.startswith("db.") else "user"
    return (
        chain, seq, prev, us, tenant_id, actor_type, str(k % 997), label, action, target_type,
        None if target_type is None else str(k % 100_000), "denied" if denied else "success",
        f"{k:032x}"[-32:], f"10.{k % 250}.{k % 199}.{k % 97}", "Mozilla/5.0 (X11; Linux x86_64) cohort-bench", details,
    )  # fmt: skip


def _admin_conn(ctx: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(ctx.admin_db_url, autocommit=True)


def seed(ctx: Any, total: int) -> int:
    """Write ``total`` hash-chained events over CHAINS new tenant chains, as the superuser, with COPY
    (hashes by apps.audit.chain.event_hash, the reference encoding). Reuses an earlier seed of the
    same size. Returns the number of events in the seeded chains."""
    with _admin_conn(ctx) as conn:
        counted = conn.execute(
            "SELECT count(*) FROM audit_auditevent e JOIN tenancy_tenant t ON t.id = e.tenant_id WHERE t.slug LIKE %s",
            [SLUG_PREFIX + "%"],
        ).fetchone()
        have = int(counted[0]) if counted else 0
        if have == total:
            log(f"{NAME}: reusing {have} seeded events")
            return have
        if have:
            raise RuntimeError(f"the scratch database holds {have} seeded events, not {total}: run without --reuse-db")
        started = time.perf_counter()
        conn.execute("SET session_replication_role = replica")  # no row-capture events for the seed tenants
        tenants = []
        for i in range(CHAINS):
            row = conn.execute(
                "INSERT INTO tenancy_tenant (slug, name, status, suspended_reason, created_at, updated_at) "
                "VALUES (%s, %s, 'active', '', now(), now()) RETURNING id",
                [f"{SLUG_PREFIX}{i:02d}", f"Verify bench {i}"],
            ).fetchone()
            assert row is not None
            tenants.append(int(row[0]))
        conn.execute("RESET session_replication_role")
        per_chain = [total // CHAINS + (1 if i < total % CHAINS else 0) for i in range(CHAINS)]
        base_us = int((datetime(2025, 1, 1, tzinfo=UTC) - EPOCH).total_seconds()) * 1_000_000
        heads: list[tuple[str, int, str]] = []
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in COPY_COLUMNS)
        with conn.cursor() as cur:
            for tid, count in zip(tenants, per_chain, strict=True):
                chain, prev = f"t{tid}", GENESIS
                with cur.copy(sql.SQL("COPY audit_auditevent ({}) FROM STDIN").format(cols)) as copy:
                    for seq in range(1, count + 1):
                        us = base_us + seq * 1_000 + tid
                        ev = _event(chain, tid, seq, prev, us)
                        h = event_hash(*ev)
                        (c, s, p, _us, t, at, aid, alabel, act, tt, tgt, oc, rid, ip, ua, det) = ev
                        created = EPOCH + timedelta(microseconds=us)
                        copy.write_row((t, c, s, created, at, aid, alabel, act, tt, tgt, oc, rid, ip, ua, det, p, h))
                        prev = h
                heads.append((chain, count, prev))
            cur.executemany(
                "INSERT INTO audit_chainhead (chain, seq, head_hash) VALUES (%s, %s, %s) "
                "ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, head_hash = EXCLUDED.head_hash",
                heads,
            )
        conn.execute("VACUUM (ANALYZE) audit_auditevent")  # same table state (hint bits, stats) for every run
        log(f"{NAME}: seeded {total} events in {time.perf_counter() - started:.1f} s")
    return total


def _stream_only() -> int:
    """The baseline: the same transaction, RLS scope and server-side cursor, no hashing."""
    n = 0
    with transaction.atomic():
        set_db_context(platform=True)
        for _row in iter_chain_rows():
            n += 1
    return n


def run(ctx: Any) -> dict[str, Any]:
    opts = ctx.opts
    seeded = seed(ctx, opts.audit_events)
    _stream_only()  # warm the caches once, untimed
    stream_s: list[float] = []
    verify_s: list[float] = []
    events = 0
    for rnd in range(REPEATS):
        for which in ("stream", "verify") if rnd % 2 == 0 else ("verify", "stream"):
            t0 = time.perf_counter()
            if which == "stream":
                n = _stream_only()
                stream_s.append(time.perf_counter() - t0)
            else:
                result = audit_verify()
                verify_s.append(time.perf_counter() - t0)
                if not result.ok:
                    raise RuntimeError(f"verification found problems: {[p.as_dict() for p in result.problems[:3]]}")
                n = result.num_events
            events = n
            log(f"{NAME}: {which} {n} events in {(stream_s if which == 'stream' else verify_s)[-1]:.2f} s")
    v, s = statistics.median(verify_s), statistics.median(stream_s)
    rate, base_rate = events / v, events / s
    per_million = 1_000_000 / rate
    return write_result(
        NAME,
        unit="events/s",
        value=rate,
        baseline="streaming the same rows (iter_chain_rows, same transaction and cursor) without hashing",
        baseline_value=base_rate,
        ratio=rate / base_rate,
        target="1,000,000 events verified in < 10 s (>= 100,000 events/s)",
        command=opts.command,
        met=per_million < 10,
        events=events,
        seeded_events=seeded,
        chains=CHAINS,
        verify_seconds=round(v, 3),
        stream_seconds=round(s, 3),
        seconds_per_million=round(per_million, 3),
        runs=REPEATS,
        statistic="median",
        quick=opts.quick,
    )
