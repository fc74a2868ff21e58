"""Admission of training jobs: pool capacity, per-tenant quotas, priorities and fair share.

A job is created QUEUED and *waiting*; no task exists for it yet. :func:`schedule` (called when a
job is created, cancelled or finishes, and by a beat task every ``COHORT_SCHEDULER_INTERVAL``)
admits waiting jobs while the pool has free slots, and only then enqueues their Celery task, after
commit. Waiting jobs carry a ``wait_reason`` a user can read (quota reached, no free slot and their
position in line, no GPU workers).

Rules, per queue (``cpu``, ``gpu``; a job takes ``slots`` worker processes):

* **Capacity**: admitted-and-unfinished jobs hold their slots; ``COHORT_POOL_{CPU,GPU}_SLOTS``.
* **Quotas** (per tenant, :class:`TrainingQuota` overrides the settings' defaults): concurrent
  jobs (all queues), concurrent CPU jobs, GPU-hours per calendar month (UTC) from the
  :class:`ResourceUsage` ledger. A job blocked by its tenant's quota never blocks other tenants.
* **Fair share**: when capacity is short, the tenant that was served least recently (oldest last
  admission; never served first) goes first, one job at a time, so tenants alternate. Within a
  tenant, higher ``priority`` first, then age. Priority never lets one tenant pass another.

The same pass is the safety net for lost work: an admitted job whose message was lost between
commit and publish, or whose worker died (lease expired), is enqueued again; the task's
conditional claim makes extra deliveries no-ops. A job that is enqueued again and again without
ever starting (a poison message) is failed after ``max_restarts`` + 2 deliveries.

The scheduler runs in platform scope (job metadata only: ids, queues, slots, timestamps; the
training tables' RLS admits it) under a transaction-level advisory lock, so passes never overlap.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import F, Max, Q, Sum
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.tenancy.scope import db_alias, platform_on_own_connection, platform_scope, tenant_scope
from apps.training.models import ResourceUsage, TrainingJob, TrainingQuota
from apps.training.selectors import ACTIVE, QUOTA_FIELDS, month_of, plain, quota_from

LOCK_KEY = 0x436F686F7274_01  # "Cohort" + 1: the scheduler's advisory lock
QUEUES = ("gpu", "cpu")


@dataclass
class Pass:
    """What one scheduling pass did (for tests, the beat task's log and the benchmark)."""

    admitted: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)
    # True when the pass was put off until the caller's transaction commits (see ``schedule``).
    deferred: bool = False


def capacity() -> dict[str, int]:
    return {"cpu": settings.COHORT_POOL_CPU_SLOTS, "gpu": settings.COHORT_POOL_GPU_SLOTS}


# --- usage ledger ----------------------------------------------------------------------------------


def record_usage(tenant_id: int, resource: str, seconds: float, *, now: datetime | None = None) -> None:
    """Add slot-seconds to the tenant's ledger for this month (an atomic upsert; tenant scope)."""
    if seconds <= 0:
        return
    month = month_of(now or timezone.now())
    with tenant_scope(tenant_id), connection.cursor() as cur:
        cur.execute(
            f"""INSERT INTO {ResourceUsage._meta.db_table} (tenant_id, month, resource, seconds)
                VALUES (%s, %s, %s, %s)
                ON CONFLICT (tenant_id, month, resource) DO UPDATE SET seconds =
                {ResourceUsage._meta.db_table}.seconds + EXCLUDED.seconds""",
            [tenant_id, month, resource, float(seconds)],
        )


# --- the pass --------------------------------------------------------------------------------------


def _waiting_reason_capacity(queue: str, used: int, cap: int, position: int) -> str:
    if cap <= 0:
        return f"no {queue.upper()} workers in this pool (capacity 0)"
    return f"waiting for a free {queue} slot ({used}/{cap} in use); position {position} in the {queue} queue"


def must_defer() -> bool:
    """Whether a pass started now must wait for the app connection's open transaction."""
    return platform_on_own_connection() and connections["default"].in_atomic_block


def schedule(now: datetime | None = None, *, fold: int | None = None) -> Pass:
    """One admission pass over all tenants. Safe to call from anywhere, any number of times.

    ``fold``: the job being created in the caller's audited change; its admission is recorded in
    the caller's event (``job.created``) instead of a separate ``job.admitted``."""
    if must_defer():
        # The platform role works on its own connection, which cannot see this transaction's
        # uncommitted rows, and would wait on the row locks it holds (a self-deadlock). So the pass
        # runs as soon as the caller's transaction commits.
        transaction.on_commit(lambda: schedule(now), using="default")
        return Pass(deferred=True)
    now = now or timezone.now()
    result = Pass()
    to_send: list[tuple[int, int, str]] = []
    with platform_scope():
        # On the platform connection, in its transaction: one scheduler pass at a time.
        with connections[db_alias()].cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        _requeue_lost(now, result, to_send)
        _admit(now, result, to_send, fold)
    if to_send:
        transaction.on_commit(lambda: _send(to_send))
    return result


def _send(jobs: list[tuple[int, int, str]]) -> None:
    """One message per job, plus one per further node of a multi-node job."""
    from apps.training.dispatch import run_job, run_node

    for tenant_id, job_id, queue in jobs:
        run_job.apply_async(args=(tenant_id, job_id), queue=queue)
        with tenant_scope(tenant_id):
            nodes = TrainingJob.objects.filter(pk=job_id).values_list("nodes", flat=True).first() or 1
        for node_rank in range(1, nodes):
            run_node.apply_async(args=(tenant_id, job_id, node_rank), queue=queue)


def _requeue_lost(now: datetime, result: Pass, to_send: list[tuple[int, int, str]]) -> None:
    """Admitted jobs with no live worker: the message was lost, or the worker died mid-run."""
    grace = timedelta(seconds=settings.COHORT_JOB_LEASE_SECONDS)
    lost = TrainingJob.all_tenants.filter(
        Q(status=TrainingJob.Status.QUEUED) | Q(lease_until__isnull=True) | Q(lease_until__lt=now),
        status__in=ACTIVE,
        admitted_at__isnull=False,
        enqueued_at__lt=now - grace,
    ).values_list("pk", "tenant_id", "queue", "enqueues", "max_restarts", "status")
    for pk, tenant_id, queue, enqueues, max_restarts, status in lost:
        with audited_change():
            if enqueues >= max_restarts + 2:
                TrainingJob.all_tenants.filter(pk=pk).update(
                    status=TrainingJob.Status.FAILED,
                    status_reason=f"undeliverable: enqueued {enqueues} times, no worker finished it",
                    finished_at=now,
                    lease_until=None,
                )
                audit_record(
                    action="job.failed", tenant=tenant_id, target_type="training.trainingjob", target_id=pk,
                    details={"reason": "undeliverable", "enqueues": enqueues},
                )  # fmt: skip
                result.failed.append(pk)
                continue
            TrainingJob.all_tenants.filter(pk=pk).update(enqueued_at=now, enqueues=F("enqueues") + 1)
            audit_record(
                action="job.requeued", tenant=tenant_id, target_type="training.trainingjob", target_id=pk,
                details={"was": status, "enqueues": enqueues + 1},
            )  # fmt: skip
        result.requeued.append(pk)
        to_send.append((tenant_id, pk, queue))


def _admit(now: datetime, result: Pass, to_send: list[tuple[int, int, str]], fold: int | None = None) -> None:
    waiting: list[dict[str, Any]] = [
        dict(row)
        for row in TrainingJob.all_tenants.filter(
            status=TrainingJob.Status.QUEUED, admitted_at__isnull=True, cancel_requested=False
        )
        .order_by("-priority", "id")
        .values("pk", "tenant_id", "queue", "slots", "wait_reason")[:5000]
    ]
    if not waiting:
        return
    tenants = {j["tenant_id"] for j in waiting}
    active = list(
        TrainingJob.all_tenants.filter(status__in=ACTIVE, admitted_at__isnull=False).values(
            "tenant_id", "queue", "slots"
        )
    )
    used = {q: sum(a["slots"] for a in active if a["queue"] == q) for q in QUEUES}
    running: dict[int, int] = defaultdict(int)
    running_cpu: dict[int, int] = defaultdict(int)
    for a in active:
        running[a["tenant_id"]] += 1
        running_cpu[a["tenant_id"]] += a["queue"] == "cpu"
    quotas = {
        q.tenant_id: quota_from(q) for q in TrainingQuota.all_tenants.filter(tenant_id__in=tenants)
    }  # fmt: skip
    month = month_of(now)
    gpu_hours = {
        row["tenant_id"]: float(row["s"] or 0.0) / 3600.0
        for row in ResourceUsage.all_tenants.filter(tenant_id__in=tenants, month=month, resource="gpu")
        .values("tenant_id")
        .annotate(s=Sum("seconds"))
    }
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    last_served: dict[int, datetime] = {t: epoch for t in tenants}
    for row in (
        TrainingJob.all_tenants.filter(tenant_id__in=tenants, admitted_at__isnull=False)
        .values("tenant_id")
        .annotate(last=Max("admitted_at"))
    ):
        last_served[row["tenant_id"]] = row["last"]
    cap = capacity()

    def quota_block(job: dict[str, Any]) -> str:
        t = job["tenant_id"]
        q = quotas.get(t) or quota_from(None)
        if running[t] >= q.max_concurrent_jobs:
            return f"tenant quota: {running[t]}/{q.max_concurrent_jobs} concurrent jobs running"
        if job["queue"] == "cpu" and running_cpu[t] >= q.max_cpu_jobs:
            return f"tenant quota: {running_cpu[t]}/{q.max_cpu_jobs} CPU jobs running"
        if job["queue"] == "gpu" and gpu_hours.get(t, 0.0) >= q.gpu_hours_per_month:
            return (
                f"tenant quota: GPU-hours for {month:%Y-%m} used "
                f"({gpu_hours.get(t, 0.0):.2f}/{q.gpu_hours_per_month:g} h)"
            )
        return ""

    admitted: list[dict[str, Any]] = []
    reasons: dict[int, str] = {}
    tick = itertools.count(1)
    for queue in QUEUES:
        per_tenant: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for job in waiting:
            if job["queue"] == queue:
                per_tenant[job["tenant_id"]].append(job)
        # Fair share: repeatedly serve the least recently served tenant whose head job can start.
        while per_tenant:
            order = sorted(per_tenant, key=lambda t: (last_served[t], t))
            progressed = False
            for t in order:
                head = per_tenant[t][0]
                block = quota_block(head)
                if block:
                    for job in per_tenant.pop(t):
                        reasons[job["pk"]] = block
                    progressed = True
                    break
                if used[queue] + head["slots"] <= cap[queue]:
                    per_tenant[t].pop(0)
                    if not per_tenant[t]:
                        del per_tenant[t]
                    admitted.append(head)
                    used[queue] += head["slots"]
                    running[t] += 1
                    running_cpu[t] += queue == "cpu"
                    last_served[t] = now + timedelta(microseconds=next(tick))
                    progressed = True
                    break
            if not progressed:
                break  # no tenant's head job fits: the rest wait for capacity
        # What is left waits for capacity: its position follows the same fair-share order.
        position = 0
        while per_tenant:
            for t in sorted(per_tenant, key=lambda t: (last_served[t], t)):
                job = per_tenant[t].pop(0)
                position += 1
                reasons[job["pk"]] = _waiting_reason_capacity(queue, used[queue], cap[queue], position)
                last_served[t] = now + timedelta(microseconds=next(tick))
                if not per_tenant[t]:
                    del per_tenant[t]
    for job in admitted:
        if job["pk"] == fold:
            TrainingJob.all_tenants.filter(pk=job["pk"], admitted_at__isnull=True).update(
                admitted_at=now, enqueued_at=now, enqueues=1, wait_reason=""
            )
            result.admitted.append(job["pk"])
            to_send.append((job["tenant_id"], job["pk"], job["queue"]))
            continue
        with audited_change():
            TrainingJob.all_tenants.filter(pk=job["pk"], admitted_at__isnull=True).update(
                admitted_at=now, enqueued_at=now, enqueues=1, wait_reason=""
            )
            audit_record(
                action="job.admitted", tenant=job["tenant_id"], target_type="training.trainingjob",
                target_id=job["pk"], details={"queue": job["queue"], "slots": job["slots"]},
            )  # fmt: skip
        result.admitted.append(job["pk"])
        to_send.append((job["tenant_id"], job["pk"], job["queue"]))
    changed: dict[str, list[int]] = defaultdict(list)
    current = {j["pk"]: j["wait_reason"] for j in waiting}
    for pk, reason in reasons.items():
        result.waiting[pk] = reason
        if current.get(pk) != reason:
            changed[reason[:300]].append(pk)
    for reason, pks in changed.items():
        TrainingJob.all_tenants.filter(pk__in=pks, admitted_at__isnull=True).update(wait_reason=reason)


# --- quotas ----------------------------------------------------------------------------------------


def quota_set(*, tenant_id: int, changes: dict[str, Any], actor_label: str = "") -> TrainingQuota:
    """Set (a value) or clear (None: back to the default) quota overrides; audited with the values
    before and after. Takes effect at the next scheduling pass, which runs at once."""
    unknown = set(changes) - set(QUOTA_FIELDS)
    if unknown:
        raise ValueError(f"unknown quota fields: {', '.join(sorted(unknown))}")
    for name, value in changes.items():
        if value is not None and (not isinstance(value, int | float | Decimal) or value < 0):
            raise ValueError(f"{name} must be a non-negative number or None (the default)")
    with tenant_scope(tenant_id), audited_change():
        row, _ = TrainingQuota.objects.select_for_update().get_or_create(tenant_id=tenant_id)
        before = {f: plain(getattr(row, f)) for f in QUOTA_FIELDS}
        for name, value in changes.items():
            setattr(row, name, Decimal(str(value)) if name == "gpu_hours_per_month" and value is not None else value)
        row.save()
        after = {f: plain(getattr(row, f)) for f in QUOTA_FIELDS}
        audit_record(
            action="training.quota_changed",
            tenant=tenant_id,
            target=row,
            details={"before": before, "after": after, "effective": asdict(quota_from(row)), "by": actor_label},
        )
    schedule()
    return row
