"""Admission of federation site tasks: the platform's ``fl`` pool, coordinators' quotas, fair share.

A round's slots are created *selected* and not yet admitted; no task exists for them. A pass of
:func:`admit_sites` (run when a round opens, when a site task ends and by the beat sweep) admits
waiting slots while the pool has room, and only then sends their ``federation.site_round``
messages. A slot that waits carries a ``wait_reason`` the coordinator and the API show (and the
stream, on each change), and a slot still waiting when its round closes times out with it.

Rules, like the training scheduler's (:mod:`apps.training.scheduler`):

* **Capacity**: admitted slots of open rounds that are selected or training hold one of the
  ``COHORT_POOL_FL_SLOTS`` worker processes of queue ``fl``.
* **Quota**, charged to the coordinator (the federation's tenant, not the data owners):
  ``max_site_tasks`` concurrent site tasks (:class:`apps.training.models.TrainingQuota`, default
  ``COHORT_QUOTA_SITE_TASKS``). A coordinator blocked by its quota never blocks another. The site
  tasks' worker time is added to the coordinator's usage ledger (``cpu`` or ``gpu``).
* **Fair share**: when the pool is short, the coordinator served least recently goes first, one
  slot at a time, so concurrent federations of different tenants alternate. Within a coordinator,
  the oldest round first, then the participant order.
* **Owners' own workers** (queue ``fl.<owner slug>``): the owner's machine, not the platform's
  pool; admitted at once, outside capacity and quota.

The pass reads in platform scope (slot metadata: ids, queues, states, times; the platform role only
reads federation tables) under a transaction-level advisory lock, and writes each admission in the
coordinator's scope while it holds the lock, so passes never overlap and capacity is never
oversubscribed. An admission is conditional (still selected, not yet admitted), so extra passes are
no-ops; messages are sent after the writes commit.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connections, transaction
from django.db.models import Max
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.common.dispatch import send
from apps.federation.models import Federation, Round, SiteRound
from apps.federation.services.events import append_event
from apps.tenancy.scope import db_alias, platform_scope, tenant_scope
from apps.training.models import TrainingQuota
from apps.training.scheduler import must_defer
from apps.training.selectors import quota_from

logger = logging.getLogger(__name__)
LOCK_KEY = 0x436F686F7274_02  # "Cohort" + 2: site admission's advisory lock
POOL = "fl"
SITE_TASK = "federation.site_round"
HOLDING = (SiteRound.State.SELECTED, SiteRound.State.TRAINING)


@dataclass
class SitePass:
    """What one admission pass did (for tests and the sweep's log)."""

    admitted: list[int] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)
    deferred: bool = False


def pool_capacity() -> int:
    return int(settings.COHORT_POOL_FL_SLOTS)


def _capacity_reason(used: int, cap: int, position: int) -> str:
    if cap <= 0:
        return "no fl workers in this pool (capacity 0)"
    return f"waiting for a free fl slot ({used}/{cap} in use); position {position} in the fl queue"


def admit_sites(now: datetime | None = None) -> SitePass:
    """One admission pass over every running federation. Safe to call from anywhere, any number of
    times; inside an open transaction it runs once that transaction commits."""
    if must_defer():
        # The pass reads on the platform connection, which cannot see the caller's uncommitted
        # round, and writes rows the caller may hold locked: it runs after commit.
        transaction.on_commit(lambda: admit_sites(now), using="default")
        return SitePass(deferred=True)
    now = now or timezone.now()
    result = SitePass()
    to_send: list[tuple[int, int, str]] = []
    with platform_scope():
        with connections[db_alias()].cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        _pass(now, result, to_send)
    if to_send:
        transaction.on_commit(lambda: _send(to_send))
    return result


WAITING_FLAG = "cohort:fl:slots-waiting"


def _set_waiting_flag(on: bool) -> None:
    try:
        cache.set(WAITING_FLAG, 1 if on else 0, timeout=None)  # missing (evicted, flushed) reads as on
    except Exception:  # a hint only: without it every site task runs a pass
        logger.warning("could not update the fl admission flag", exc_info=True)


def admit_if_waiting() -> SitePass:
    """After a site task: a pass only when the last one left slots waiting (a hint in the cache;
    the beat sweep runs a full pass regardless, so a lost hint only delays an admission)."""
    try:
        waiting = cache.get(WAITING_FLAG, 1)
    except Exception:
        waiting = 1
    return admit_sites() if waiting else SitePass()


def _send(slots: list[tuple[int, int, str]]) -> None:
    for tenant_id, slot_id, queue in slots:
        send(SITE_TASK, args=(tenant_id, slot_id), queue=queue)


def _pass(now: datetime, result: SitePass, to_send: list[tuple[int, int, str]]) -> None:
    open_slots = SiteRound.all_tenants.filter(
        round__status=Round.Status.OPEN, round__federation__status=Federation.Status.RUNNING
    )
    waiting: list[dict[str, Any]] = [
        dict(row)
        for row in open_slots.filter(state=SiteRound.State.SELECTED, admitted_at__isnull=True)
        .order_by("round_id", "id")
        .values("pk", "tenant_id", "queue", "wait_reason", "site_id", "round__number", "round__federation_id")[:5000]
    ]
    if not waiting:
        _set_waiting_flag(False)
        return
    own = [s for s in waiting if s["queue"] != POOL]
    pooled = [s for s in waiting if s["queue"] == POOL]
    coordinators = {s["tenant_id"] for s in pooled}
    running: dict[int, int] = defaultdict(int)
    used = 0
    for tenant_id in open_slots.filter(queue=POOL, admitted_at__isnull=False, state__in=HOLDING).values_list(
        "tenant_id", flat=True
    ):
        running[tenant_id] += 1
        used += 1
    quotas = {q.tenant_id: quota_from(q) for q in TrainingQuota.all_tenants.filter(tenant_id__in=coordinators)}
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    last_served: dict[int, datetime] = {t: epoch for t in coordinators}
    for row in (
        SiteRound.all_tenants.filter(tenant_id__in=coordinators, queue=POOL, admitted_at__isnull=False)
        .values("tenant_id")
        .annotate(last=Max("admitted_at"))
    ):
        last_served[row["tenant_id"]] = row["last"]
    cap = pool_capacity()
    tick = itertools.count(1)

    def quota_block(tenant_id: int) -> str:
        limit = (quotas.get(tenant_id) or quota_from(None)).max_site_tasks
        if running[tenant_id] >= limit:
            return f"coordinator quota: {running[tenant_id]}/{limit} site tasks running"
        return ""

    admitted: list[dict[str, Any]] = list(own)
    reasons: dict[int, str] = {}
    per_tenant: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in pooled:
        per_tenant[s["tenant_id"]].append(s)
    # Fair share: serve the least recently served coordinator whose head slot can start.
    while per_tenant:
        progressed = False
        for t in sorted(per_tenant, key=lambda t: (last_served[t], t)):
            block = quota_block(t)
            if block:
                for s in per_tenant.pop(t):
                    reasons[s["pk"]] = block
                progressed = True
                break
            if used < cap:
                admitted.append(per_tenant[t].pop(0))
                if not per_tenant[t]:
                    del per_tenant[t]
                used += 1
                running[t] += 1
                last_served[t] = now + timedelta(microseconds=next(tick))
                progressed = True
                break
        if not progressed:
            break  # the pool is full: the rest wait, in the same fair-share order
    position = 0
    while per_tenant:
        for t in sorted(per_tenant, key=lambda t: (last_served[t], t)):
            s = per_tenant[t].pop(0)
            position += 1
            reasons[s["pk"]] = _capacity_reason(used, cap, position)
            last_served[t] = now + timedelta(microseconds=next(tick))
            if not per_tenant[t]:
                del per_tenant[t]
    _write(now, waiting, admitted, reasons, result, to_send)
    _set_waiting_flag(bool(reasons))  # whether slots are left waiting after this pass
    rank = {s["pk"]: i for i, s in enumerate(admitted)}
    result.admitted.sort(key=lambda pk: rank[pk])  # in the order decided (written per coordinator)


def _write(
    now: datetime,
    waiting: list[dict[str, Any]],
    admitted: list[dict[str, Any]],
    reasons: dict[int, str],
    result: SitePass,
    to_send: list[tuple[int, int, str]],
) -> None:
    """Record the pass in each coordinator's scope (the platform role only reads federations)."""
    by_tenant: dict[int, list[tuple[dict[str, Any], str | None]]] = defaultdict(list)
    for s in admitted:
        by_tenant[s["tenant_id"]].append((s, None))
    for s in waiting:
        reason = reasons.get(s["pk"])
        if reason is not None and reason[:300] != s["wait_reason"]:
            by_tenant[s["tenant_id"]].append((s, reason[:300]))
        if reason is not None:
            result.waiting[s["pk"]] = reason
    for tenant_id, items in by_tenant.items():
        events: list[tuple[int, int, int, dict[str, Any]]] = []
        with tenant_scope(tenant_id):
            for s, reason in items:
                if reason is None:
                    continue
                slot = SiteRound.objects.filter(pk=s["pk"], state=SiteRound.State.SELECTED, admitted_at__isnull=True)
                if slot.update(wait_reason=reason):  # bookkeeping (not audited per row)
                    events.append((s["round__federation_id"], s["round__number"], s["site_id"],
                                   {"state": "selected", "wait_reason": reason}))  # fmt: skip
        admits = [s for s, reason in items if reason is None]
        if admits:
            try:
                _admit(tenant_id, now, admits, result, to_send, events)
            except _NothingAdmitted:  # every one was closed meanwhile: nothing changed, nothing to audit
                pass
        for fed_id, number, site_id, data in events:
            with tenant_scope(tenant_id):
                fed = Federation.objects.get(pk=fed_id)
            append_event(fed, "site", data, round_number=number, site_id=site_id)


class _NothingAdmitted(Exception):
    pass


def _admit(
    tenant_id: int,
    now: datetime,
    admits: list[dict[str, Any]],
    result: SitePass,
    to_send: list[tuple[int, int, str]],
    events: list[tuple[int, int, int, dict[str, Any]]],
) -> None:
    """Admit ``admits`` (one coordinator's) in its scope, audited as one event listing them;
    conditional on each slot still waiting, so a pass never admits a slot twice or one its round
    closed."""
    with tenant_scope(tenant_id), audited_change():
        recorded: list[dict[str, Any]] = []
        for s in admits:
            slot = SiteRound.objects.filter(pk=s["pk"], state=SiteRound.State.SELECTED, admitted_at__isnull=True)
            if not slot.update(admitted_at=now, enqueued_at=now, wait_reason=""):
                continue
            recorded.append({"slot": s["pk"], "federation": s["round__federation_id"], "round": s["round__number"],
                             "queue": s["queue"], "waited": bool(s["wait_reason"])})  # fmt: skip
            result.admitted.append(s["pk"])
            to_send.append((tenant_id, s["pk"], s["queue"]))
            if s["wait_reason"]:
                events.append((s["round__federation_id"], s["round__number"], s["site_id"],
                               {"state": "selected", "wait_reason": ""}))  # fmt: skip
        if not recorded:
            raise _NothingAdmitted
        audit_record(action="federation.sites_admitted", tenant=tenant_id, details={"slots": recorded})
