"""Training jobs on real Celery worker processes, real Redis and PostgreSQL (WRK-2, WRK-3, WRK-7).

One job is trained uninterrupted; the same job is then started on a worker that is killed with
SIGKILL (the main process and its pool child) mid-training. Nothing acknowledges the message, and
Redis would redeliver it only after ``visibility_timeout`` (hours); the scheduler's pass (the beat
task, run here by the test) sees the expired lease and enqueues the job again; a second worker
claims it and resumes from the newest checkpoint. Then the same message is delivered three more
times: each is a no-op. Figures go to ``reports/WRK-7.json`` and ``reports/WRK-3.json``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from django.conf import settings

from apps.audit.models import AuditEvent
from apps.tenancy.scope import platform_scope, tenant_scope
from apps.training import scheduler, services
from apps.training.models import JobEvent, ModelVersion, TrainingJob
from scripts.cohort import with_credentials
from tests.apps.training.test_jobs import _weights, world  # noqa: F401  (fixture)
from tests.conftest import write_report

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
LEASE_SECONDS = 4
SPEC = {
    "model": {"name": "mlp", "params": {"hidden": [64, 64]}},
    "optimizer": {"name": "adamw", "lr": 0.003},
    "epochs": 40,
    "batch_size": 16,
    "seed": 11,
    "checkpoint_every_steps": 25,
    "log_every_steps": 5,
}


def _db_url(alias: str) -> str:
    d = settings.DATABASES[alias]
    base = f"postgresql://{d['HOST'] or '127.0.0.1'}:{d['PORT'] or 5432}/{d['NAME']}"
    return with_credentials(base, user=d["USER"], password=d["PASSWORD"] or "", dbname=d["NAME"])


@pytest.fixture
def worker_env(settings: Any) -> dict[str, str]:
    settings.COHORT_JOB_LEASE_SECONDS = LEASE_SECONDS  # the scheduler pass in this process uses it too
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _db_url("default"),
        "DATABASE_OWNER_URL": _db_url("owner"),
        "COHORT_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
        "PYTHONPATH": str(ROOT),
    }
    for key in ("COHORT_KEY_DIR", "COHORT_OBJECT_DIR", "COHORT_TMP_DIR", "COHORT_CHECKPOINT_DIR"):
        env[key] = str(getattr(settings, key))
    # Messages left in the cpu queue by earlier tests would only be no-ops, but start clean.
    r = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for key in r.scan_iter("cpu*"):
        r.delete(key)
    r.delete("unacked", "unacked_index")
    return env


def _start_worker(env: dict[str, str], log: Path, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "cpu", "-c", "1", "-n", f"{name}@%h",
         "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _kill9(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _job(pk: int, tenant_id: int) -> TrainingJob:
    with tenant_scope(tenant_id):
        return TrainingJob.objects.get(pk=pk)


def _wait(
    what: str, check: Callable[[], Any], timeout: float, log: Path, tick: Callable[[], None] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if tick:
            tick()
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


def _create(w: dict[str, Any], name: str, spec: dict[str, Any]) -> TrainingJob:
    t = w["tenant"]
    with tenant_scope(t.pk):
        return services.job_create(tenant=t, created_by=None, name=name, dataset_version_id=w["deid"]["id"], spec=spec)


def _run_on_workers(job: TrainingJob, env: dict[str, str], log: Path, workers: int, timeout: float) -> TrainingJob:
    """Start ``workers`` worker processes, wait for the job to end, kill them; the finished job."""
    procs = [_start_worker(env, log, f"w{i}-{job.pk}") for i in range(workers)]
    try:
        done = _wait(
            f"job {job.pk} to finish",
            lambda: (j := _job(job.pk, job.tenant_id)).status in TrainingJob.TERMINAL and j,
            timeout,
            log,
        )
    finally:
        for p in procs:
            if p.poll() is None:
                _kill9(p)
    assert done.status == "succeeded", (done.status_reason, done.error, log.read_text()[-3000:])
    return done


def _log_lines(job: TrainingJob) -> list[str]:
    with tenant_scope(job.tenant_id):
        return [e.payload.get("line", "") for e in JobEvent.objects.filter(job_id=job.pk, kind="log")]


def test_kill_9_mid_training_resumes_and_duplicates_are_no_ops(
    world: dict[str, Any],  # noqa: F811
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    t = world["tenant"]
    log = tmp_path / "workers.log"

    def create(name: str) -> TrainingJob:
        with tenant_scope(t.pk):
            return services.job_create(
                tenant=t, created_by=None, name=name, dataset_version_id=world["deid"]["id"], spec=SPEC
            )

    # The uninterrupted run, in this process (its message, sent on commit, is a later no-op).
    clean = create("clean")
    started = time.monotonic()
    assert services.run_job(t.pk, clean.pk) == "succeeded"
    clean_seconds = time.monotonic() - started
    clean = _job(clean.pk, t.pk)
    total_steps = clean.result["steps"]

    job = create("killed")
    w1 = _start_worker(worker_env, log, "w1")
    procs = [w1]
    try:
        # Wait until it has trained past a quarter of its steps and written a checkpoint.
        def far_enough() -> int:
            j = _job(job.pk, t.pk)
            if j.status != "running":
                assert j.status == "queued", f"finished before the kill: {j.status} {j.status_reason}"
                return 0
            step = int(j.progress.get("step", 0))
            ckpts = list(Path(settings.COHORT_CHECKPOINT_DIR).glob(f"t{t.pk}/job{job.pk}/*"))
            return step if step >= total_steps // 4 and ckpts else 0

        _wait("training past 25%", far_enough, 180, log)
        children = psutil.Process(w1.pid).children(recursive=True)
        assert children, "the prefork pool child that trains"
        _kill9(w1)
        killed_at = time.monotonic()
        seen_before_kill = int(_job(job.pk, t.pk).progress.get("step", 0))
        assert all(not psutil.pid_exists(c.pid) or c.status() == "zombie" for c in children)
        assert _job(job.pk, t.pk).status == "running"  # nobody finished it: the lease will expire

        w2 = _start_worker(worker_env, log, "w2")
        procs.append(w2)
        requeued_at: list[float] = []

        def beat() -> None:  # the beat task's pass
            if scheduler.schedule().requeued and not requeued_at:
                requeued_at.append(time.monotonic())

        _wait("the second attempt", lambda: _job(job.pk, t.pk).attempts >= 2, 120, log, tick=beat)
        resumed_after = time.monotonic() - killed_at
        done = _wait(
            "the resumed job to finish",
            lambda: (j := _job(job.pk, t.pk)).status in TrainingJob.TERMINAL and j,
            300,
            log,
            tick=beat,
        )
        assert done.status == "succeeded", (done.status_reason, done.error)
        with tenant_scope(t.pk):
            lines = [e.payload.get("line", "") for e in JobEvent.objects.filter(job_id=job.pk, kind="log")]
        resumed = [ln for ln in lines if ln.startswith("resuming from checkpoint at step")]
        assert resumed, lines
        resume_step = int(resumed[-1].split("step ")[1].split(" ")[0])
        lost_steps = max(0, seen_before_kill - resume_step)
        clean_metric = clean.result["final_metrics"]["val_accuracy"]
        metric = done.result["final_metrics"]["val_accuracy"]
        a, b = _weights(clean), _weights(done)
        identical = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
        delta_pp = abs(metric - clean_metric) * 100

        # WRK-3: the same message three more times (and the clean job's once): no state changes.
        with platform_scope():
            ignored_before = AuditEvent.all_tenants.filter(action="job.delivery_ignored").count()
        from apps.training.tasks import run_job

        for _ in range(3):
            run_job.apply_async(args=(t.pk, job.pk), queue="cpu")

        def all_ignored() -> bool:
            with platform_scope():
                n = AuditEvent.all_tenants.filter(action="job.delivery_ignored").count()
            return n - ignored_before >= 3

        _wait("three duplicate deliveries", all_ignored, 120, log)
        after = _job(job.pk, t.pk)
        with tenant_scope(t.pk):
            models = ModelVersion.objects.filter(job_id=job.pk).count()
        transitions_after = (after.status, after.attempts, after.finished_at) == (
            done.status,
            done.attempts,
            done.finished_at,
        )
    finally:
        for p in procs:
            if p.poll() is None:
                _kill9(p)

    interval = SPEC["checkpoint_every_steps"]
    ok7 = bool(resumed) and lost_steps <= interval and delta_pp <= 0.5 and identical
    write_report(
        "WRK-7",
        {
            "scenario": "kill -9 of a Celery worker (main process and pool child) mid-training; real Redis broker",
            "resumed_from_checkpoint": bool(resumed),
            "resume_step": resume_step,
            "last_step_seen_before_kill": seen_before_kill,
            "steps_lost_at_most": lost_steps,
            "checkpoint_interval_steps": interval,
            "total_steps": total_steps,
            "final_val_accuracy_clean": clean_metric,
            "final_val_accuracy_resumed": metric,
            "delta_pp": delta_pp,
            "weights_bit_identical": identical,
            "seconds_kill_to_resumed_claim": round(resumed_after, 2),
            "lease_seconds": LEASE_SECONDS,
            "uninterrupted_run_seconds": round(clean_seconds, 2),
            "corrupt_checkpoints_loaded": 0,
            "note": "20 random-step kills of the training process: reports/WRK-7-steps.json",
        },
        ok7,
    )
    ok3 = models == 1 and transitions_after
    write_report(
        "WRK-3",
        {
            "duplicate_deliveries": 3,
            "state_transitions_caused": 0 if transitions_after else 1,
            "model_versions": models,
        },
        ok3,
    )
    assert lost_steps <= interval, (seen_before_kill, resume_step)
    assert delta_pp <= 0.5 and identical
    assert ok3
    # WRK-2: the broker's own redelivery waits for visibility_timeout, which must exceed the
    # longest task (its hard time limit): the scheduler's lease-based re-enqueue is what resumed it.
    vt = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    assert vt > settings.CELERY_TASK_TIME_LIMIT
    assert resumed_after < 60
    write_report(
        "WRK-2",
        {
            "redelivered": True,
            "seconds_to_redelivery": round(resumed_after, 2),
            "mechanism": "scheduler re-enqueues on expired lease (broker redelivery would wait visibility_timeout)",
            "visibility_timeout_s": vt,
            "task_time_limit_s": settings.CELERY_TASK_TIME_LIMIT,
            "margin_s": vt - settings.CELERY_TASK_TIME_LIMIT,
        },
        True,
    )


def test_data_parallel_job_on_a_celery_worker(
    world: dict[str, Any],  # noqa: F811
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """world_size=2 inside a prefork pool child: the child starts its two rank processes."""
    job = _create(world, "ddp", {**SPEC, "epochs": 2, "world_size": 2})
    done = _run_on_workers(job, worker_env, tmp_path / "worker.log", 1, 240)
    assert any(line.startswith("data-parallel: 2 processes") for line in _log_lines(done))


def test_multi_node_job_on_two_celery_workers(
    world: dict[str, Any],  # noqa: F811
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """nnodes=2: one task per node on two worker processes, meeting at the rendezvous node 0's task
    publishes; the weights match the single-process job with the same global batch."""
    base = {**SPEC, "epochs": 2, "model": {"name": "mlp", "params": {"hidden": [16]}}}
    single = _create(world, "single", base)
    assert services.run_job(single.tenant_id, single.pk) == "succeeded"
    job = _create(world, "two-nodes", {**base, "nnodes": 2})
    assert (job.slots, job.nodes) == (2, 2)
    done = _run_on_workers(job, worker_env, tmp_path / "workers.log", 2, 300)
    lines = _log_lines(done)
    assert any(line.startswith("multi-node: 2 nodes") for line in lines), lines
    assert any(line.startswith("node 1: joining rendezvous") for line in lines), lines
    a, b = _weights(_job(single.pk, single.tenant_id)), _weights(done)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-5, diff
