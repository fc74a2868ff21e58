"""Admission under a simulated busy pool: capacity, fair share across tenants, priorities within a
tenant, quotas (concurrent jobs, CPU jobs, GPU-hours) with visible reasons, audited quota changes,
lost messages re-enqueued, poison messages given up, stray messages refused, lease fencing.

Jobs are "finished" here by a status update (no training), since only admission is under test; the
task body's own use of the scheduler is covered by test_jobs and the worker end-to-end tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from io import StringIO
from typing import Any
from unittest.mock import patch

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.tenancy.models import Role
from apps.tenancy.scope import platform_scope, tenant_scope
from apps.training import scheduler, services
from apps.training.models import TrainingJob
from tests.apps.training.test_jobs import SPEC, _job, world  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent() -> Iterator[list[tuple[int, int, str]]]:
    """The Celery messages the scheduler sends (after commit), instead of a broker."""
    calls: list[tuple[int, int, str]] = []
    with patch.object(scheduler, "_send", lambda jobs: calls.extend(jobs)):
        yield calls


@pytest.fixture
def pool(settings: Any) -> Any:
    settings.COHORT_POOL_CPU_SLOTS = 2
    settings.COHORT_POOL_GPU_SLOTS = 0
    settings.COHORT_QUOTA_CONCURRENT_JOBS = 10
    settings.COHORT_QUOTA_CPU_JOBS = 10
    settings.COHORT_QUOTA_GPU_HOURS = 5.0
    return settings


@pytest.fixture
def three(world: dict[str, Any], make_tenant: Callable[..., Any]) -> list[Any]:  # noqa: F811
    """Three tenants that may all train on the owner's dataset (two hold process grants)."""
    third = make_tenant()
    owner, t = world["owner"], world["tenant"]
    for grantee in (world["partner"], third):
        r = owner.post(
            f"/api/v1/tenants/{t.slug}/datasets/{world['ds']}/grants/",
            {"grantee": grantee.slug, "permission": "process"},
            format="json",
        )
        assert r.status_code == 201, r.content
    return [t, world["partner"], third]


def create(w: dict[str, Any], tenant: Any, name: str, *, priority: int = 0, spec: dict[str, Any] | None = None) -> Any:
    with tenant_scope(tenant.pk):
        return services.job_create(
            tenant=tenant,
            created_by=None,
            name=name,
            dataset_version_id=w["deid"]["id"],
            spec=spec or SPEC,
            priority=priority,
        )


def finish(job: Any) -> None:
    with tenant_scope(job.tenant_id):
        TrainingJob.objects.filter(pk=job.pk).update(status="succeeded", finished_at=timezone.now())
    scheduler.schedule()


def admitted(job: Any) -> bool:
    return _job(job).admitted_at is not None


def test_fair_share_across_tenants_and_priority_within_one(
    world: dict[str, Any],  # noqa: F811
    three: list[Any],
    pool: Any,
    sent: list[tuple[int, int, str]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    a, b, c = three
    with django_capture_on_commit_callbacks(execute=True):
        a1, a2, a3 = (create(world, a, f"a{i}") for i in (1, 2, 3))
    assert [admitted(j) for j in (a1, a2, a3)] == [True, True, False]
    assert [(t, j) for t, j, _q in sent] == [(a.pk, a1.pk), (a.pk, a2.pk)]  # sent after commit only
    assert _job(a3).wait_reason == "waiting for a free cpu slot (2/2 in use); position 1 in the cpu queue"
    b1 = create(world, b, "b1")
    c1 = create(world, c, "c1")
    a4 = create(world, a, "a4", priority=5)  # A's urgent job goes before A's older one, never before B or C
    # Fair share: B and C have never been served, A just was: B, C, then A's jobs by priority.
    assert _job(b1).wait_reason.endswith("position 1 in the cpu queue")
    assert _job(c1).wait_reason.endswith("position 2 in the cpu queue")
    assert _job(a4).wait_reason.endswith("position 3 in the cpu queue")
    assert _job(a3).wait_reason.endswith("position 4 in the cpu queue")
    finish(a1)
    assert admitted(b1) and not admitted(c1) and not admitted(a3) and not admitted(a4)
    finish(a2)
    assert admitted(c1) and not admitted(a4)
    finish(b1)
    assert admitted(a4) and not admitted(a3)  # priority within the tenant
    finish(c1)
    assert admitted(a3)
    order = sorted((a1, a2, b1, c1, a4, a3), key=lambda j: _job(j).admitted_at)
    assert [j.pk for j in order] == [j.pk for j in (a1, a2, b1, c1, a4, a3)]
    # Admission at creation is recorded in job.created; later admissions by their own event.
    with platform_scope():
        acts = list(
            AuditEvent.all_tenants.filter(action="job.admitted").order_by("id").values_list("target_id", flat=True)
        )
        created = [
            json.loads(d)["admitted"]
            for d in AuditEvent.all_tenants.filter(action="job.created")
            .order_by("id")
            .values_list("details", flat=True)
        ]
    assert acts == [str(j.pk) for j in (b1, c1, a4, a3)]
    assert created == [True, True, False, False, False, False]


def test_quotas_hold_a_tenant_back_without_blocking_others(
    world: dict[str, Any],  # noqa: F811
    three: list[Any],
    pool: Any,
    sent: list[tuple[int, int, str]],
) -> None:
    a, b, _c = three
    pool.COHORT_POOL_CPU_SLOTS = 4
    scheduler.quota_set(tenant_id=a.pk, changes={"max_concurrent_jobs": 1}, actor_label="test")
    a1, a2 = create(world, a, "a1"), create(world, a, "a2")
    b1 = create(world, b, "b1")
    assert admitted(a1) and not admitted(a2) and admitted(b1)
    assert _job(a2).wait_reason == "tenant quota: 1/1 concurrent jobs running"
    # CPU-job quota (the concurrent-jobs quota back to its default).
    scheduler.quota_set(tenant_id=a.pk, changes={"max_concurrent_jobs": None, "max_cpu_jobs": 1}, actor_label="t")
    assert not admitted(a2) and _job(a2).wait_reason == "tenant quota: 1/1 CPU jobs running"
    scheduler.quota_set(tenant_id=a.pk, changes={"max_cpu_jobs": 3}, actor_label="test")
    assert admitted(a2)  # a quota change takes effect at once
    # Every change is audited with the values before and after.
    with platform_scope():
        changes = [
            json.loads(d)
            for d in AuditEvent.all_tenants.filter(tenant_id=a.pk, action="training.quota_changed")
            .order_by("id")
            .values_list("details", flat=True)
        ]
    assert len(changes) == 3
    assert changes[0]["before"]["max_concurrent_jobs"] is None and changes[0]["after"]["max_concurrent_jobs"] == 1
    assert changes[2]["after"]["max_cpu_jobs"] == 3 and changes[2]["effective"]["max_cpu_jobs"] == 3
    with pytest.raises(ValueError):
        scheduler.quota_set(tenant_id=a.pk, changes={"max_cpu_jobs": -1})
    with pytest.raises(ValueError):
        scheduler.quota_set(tenant_id=a.pk, changes={"nodes": 3})


def test_gpu_hours_and_gpu_capacity(
    world: dict[str, Any],  # noqa: F811
    three: list[Any],
    pool: Any,
    sent: list[tuple[int, int, str]],
) -> None:
    a, b, _c = three
    gpu_spec = {**SPEC, "device": "cuda"}
    g1 = create(world, a, "g1", spec=gpu_spec)
    assert _job(g1).queue == "gpu" and not admitted(g1)
    assert _job(g1).wait_reason == "no GPU workers in this pool (capacity 0)"
    pool.COHORT_POOL_GPU_SLOTS = 2
    scheduler.record_usage(b.pk, "gpu", 5.0 * 3600)  # B has used its 5 GPU-hours this month
    g2 = create(world, b, "g2", spec=gpu_spec)
    assert admitted(g1) and not admitted(g2)
    month = timezone.now().strftime("%Y-%m")
    assert _job(g2).wait_reason == f"tenant quota: GPU-hours for {month} used (5.00/5 h)"
    with tenant_scope(b.pk):
        from apps.training.selectors import tenant_overview

        over = tenant_overview(b.pk)
    assert over["usage"]["gpu_hours"] == 5.0 and over["waiting_jobs"] == 1
    assert over["quota"]["gpu_hours_per_month"] == 5.0 and over["overrides"]["gpu_hours_per_month"] is None
    scheduler.quota_set(tenant_id=b.pk, changes={"gpu_hours_per_month": 20}, actor_label="test")
    assert admitted(g2)


def test_lost_messages_are_sent_again_and_poison_gives_up(
    world: dict[str, Any],  # noqa: F811
    pool: Any,
    sent: list[tuple[int, int, str]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    t = world["tenant"]
    with django_capture_on_commit_callbacks(execute=True):
        job = create(world, t, "lost")
    assert sent == [(t.pk, job.pk, "cpu")]
    # The message vanished (broker flushed, crash between commit and publish): nothing claims it.
    later = timezone.now() + timedelta(seconds=pool.COHORT_JOB_LEASE_SECONDS + 1)
    with django_capture_on_commit_callbacks(execute=True):
        done = scheduler.schedule(now=later)
    assert done.requeued == [job.pk] and sent[-1] == (t.pk, job.pk, "cpu")
    with django_capture_on_commit_callbacks(execute=True):
        assert scheduler.schedule(now=later).requeued == []  # not again within the grace period
    # A message that never gets a worker to start it is given up after max_restarts + 2 sends.
    for _ in range(2, 20):
        later += timedelta(seconds=pool.COHORT_JOB_LEASE_SECONDS + 1)
        with django_capture_on_commit_callbacks(execute=True):
            done = scheduler.schedule(now=later)
        if done.failed:
            break
    j = _job(job)
    assert j.status == "failed" and j.status_reason.startswith("undeliverable") and j.enqueues == j.max_restarts + 2
    assert len([s for s in sent if s[1] == job.pk]) == j.max_restarts + 2


def test_a_stray_message_cannot_start_a_waiting_job_and_a_lost_lease_is_fenced(
    world: dict[str, Any],  # noqa: F811
    pool: Any,
    sent: list[tuple[int, int, str]],
) -> None:
    t = world["tenant"]
    pool.COHORT_POOL_CPU_SLOTS = 1
    first, second = create(world, t, "first"), create(world, t, "second")
    assert not admitted(second)
    assert services.run_job(t.pk, second.pk) == "ignored"  # only the scheduler starts jobs
    assert _job(second).status == "queued"
    # Worker 1 claims, then stalls past its lease; worker 2 takes over; worker 1 must notice.
    one = services.claim(t.pk, first.pk)
    assert one is not None
    lease_one = services.Lease(one)
    with tenant_scope(t.pk):
        TrainingJob.objects.filter(pk=first.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    two = services.claim(t.pk, first.pk)
    assert two is not None and two.lease_owner != one.lease_owner and two.attempts == 2
    assert lease_one.renew(force=True) is False
    assert services.Lease(two).renew(force=True) is True
    assert services._finish(one, "succeeded", "stale worker", lease=lease_one) is False
    assert _job(first).status == "running"  # the stale worker changed nothing


def test_quota_api_and_command(
    world: dict[str, Any],  # noqa: F811
    member: Callable[..., Any],
    api_client_for: Callable[..., Any],
    pool: Any,
    sent: list[tuple[int, int, str]],
) -> None:
    t = world["tenant"]
    viewer = api_client_for(member(Role.AUDITOR, tenant=t))
    out = StringIO()
    call_command(
        "training_quota", "set", t.slug, "--max-concurrent-jobs", "1", "--gpu-hours-per-month", "2.5",
        "--max-site-tasks", "3", stdout=out,
    )  # fmt: skip
    shown = json.loads(out.getvalue())
    assert shown["quota"]["max_concurrent_jobs"] == 1 and shown["overrides"]["gpu_hours_per_month"] == 2.5
    create(world, t, "x1")
    waiting = create(world, t, "x2")
    r = viewer.get(f"/api/v1/tenants/{t.slug}/training/quota/")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["quota"] == {"max_concurrent_jobs": 1, "max_cpu_jobs": 10, "gpu_hours_per_month": 2.5,
                             "max_site_tasks": 3}  # fmt: skip
    assert body["usage"]["running_jobs"] == 1 and body["waiting_jobs"] == 1
    r = viewer.get(f"/api/v1/tenants/{t.slug}/jobs/{waiting.pk}/")
    assert r.json()["wait_reason"] == "tenant quota: 1/1 concurrent jobs running" and r.json()["admitted_at"] is None
    for bad in (["--max-cpu-jobs", "many"], ["--max-cpu-jobs", "-2"], []):
        with pytest.raises(CommandError):
            call_command("training_quota", "set", t.slug, *bad, stdout=StringIO())
    with pytest.raises(CommandError):
        call_command("training_quota", "set", "no-such-tenant", "--max-cpu-jobs", "1", stdout=StringIO())
    call_command("training_quota", "set", t.slug, "--max-concurrent-jobs", "default", stdout=StringIO())
    assert _job(waiting).admitted_at is not None
