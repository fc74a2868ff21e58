"""Training jobs on real Celery worker processes, real Redis and PostgreSQL (WRK-2, WRK-3, WRK-7).

One job is trained uninterrupted; the same job is then started on a worker that is killed with
SIGKILL (its whole process group) mid-training. Nothing acknowledges the message, and
Redis would redeliver it only after ``visibility_timeout`` (hours); the scheduler's pass (the beat
task, run here by the test) sees the expired lease and enqueues the job again; a second worker
claims it (its process is the lease owner: the redelivery is observed, not assumed) and resumes
from the newest real checkpoint, skipping three corrupt ones planted newer than it before the
resume. Then the same message is delivered three more times: each is a no-op. Figures go to
``reports/WRK-7.json``, ``reports/WRK-3.json`` and ``reports/WRK-2.json``.
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
from tests.apps.training.test_jobs import _weights, world  # noqa: F401  (fixture)
from tests.conftest import write_report
from tests.processes import child_env

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


@pytest.fixture
def worker_env(settings: Any) -> dict[str, str]:
    settings.COHORT_JOB_LEASE_SECONDS = LEASE_SECONDS  # the scheduler pass in this process uses it too
    # Every database alias (socket folder or host, port, test database name), Redis, secrets and
    # state folders as this process sees them: tests/processes.py.
    env = child_env(settings, COHORT_JOB_LEASE_SECONDS=str(LEASE_SECONDS))
    # Messages left in the cpu queue by earlier tests would only be no-ops, but start clean.
    r = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for key in r.scan_iter("cpu*"):
        r.delete(key)
    r.delete("unacked", "unacked_index")
    return env


def _start_worker(env: dict[str, str], log: Path, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "cpu", "--pool", "solo", "-n", f"{name}@%h",
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


def _ckpt_dir(job: TrainingJob) -> Path:
    return Path(settings.COHORT_CHECKPOINT_DIR) / f"t{job.tenant_id}" / f"job{job.pk}"


def _plant_corrupt_checkpoints(job: TrainingJob, foreign: TrainingJob, tmp: Path) -> tuple[int, dict[int, str]]:
    """Put three checkpoints newer than any real one into the job's folder, each broken another way:
    a save cut off half-way, a save with one flipped byte, and another run's newest checkpoint
    under a newer name. Returns (the newest real step, {planted step: how it is broken})."""
    from apps.vault import services as vault
    from apps.vault.models import DataKey
    from workers.training.checkpoint import checkpoint_name, load_latest, save_checkpoint

    job = _job(job.pk, job.tenant_id)
    with tenant_scope(job.tenant_id):
        key = vault.material(DataKey.objects.get(pk=job.checkpoint_key_id))
    context = f"cohort/checkpoint/{job.tenant_id}/{job.pk}".encode()
    found = load_latest(_ckpt_dir(job), key=key, context=context)
    assert found is not None, "no real checkpoint to resume from"
    state, newest = found
    interval = int(SPEC["checkpoint_every_steps"])
    planted: dict[int, str] = {}

    def sealed(step: int) -> bytes:  # a complete, authentic checkpoint of this run at ``step``
        info = save_checkpoint(state, tmp / f"s{step}", key=key, context=context, step=step)
        return info.path.read_bytes()

    truncated_step, flipped_step, foreign_step = (newest.step + k * interval for k in (1, 2, 3))
    data = sealed(truncated_step)
    (_ckpt_dir(job) / checkpoint_name(truncated_step)).write_bytes(data[: len(data) // 2])
    planted[truncated_step] = "truncated"
    data = bytearray(sealed(flipped_step))
    data[len(data) // 2] ^= 0x01
    (_ckpt_dir(job) / checkpoint_name(flipped_step)).write_bytes(bytes(data))
    planted[flipped_step] = "one byte flipped"
    other = max(_ckpt_dir(foreign).glob("ckpt-*.enc"))
    (_ckpt_dir(job) / checkpoint_name(foreign_step)).write_bytes(other.read_bytes())
    planted[foreign_step] = f"another run's checkpoint ({other.name} of job {foreign.pk})"
    return newest.step, planted


def _owner_pid(lease_owner: str) -> int:
    """The pid in a lease owner ``<host>:<pid>:<nonce>`` (apps.training.services.claim)."""
    return int(lease_owner.rsplit(":", 2)[1])


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _process_tree(proc: subprocess.Popen[bytes]) -> set[int]:
    return {proc.pid} | {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}


def _job_audit(job: TrainingJob, action: str) -> list[dict[str, Any]]:
    with tenant_scope(job.tenant_id):
        events = AuditEvent.objects.filter(action=action, target_id=str(job.pk)).order_by("seq")
        return [e.details_dict for e in events]


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
        w1_pids = _process_tree(w1)  # the worker and whatever it started (a pool child, rank processes)
        first_owner = _job(job.pk, t.pk).lease_owner
        assert _owner_pid(first_owner) in w1_pids, (first_owner, w1_pids)  # the first worker trains it
        _kill9(w1)
        killed_at = time.monotonic()
        seen_before_kill = int(_job(job.pk, t.pk).progress.get("step", 0))
        # SIGKILL is delivered asynchronously: give the killed tree a moment to be gone.
        deadline = time.monotonic() + 10
        while [pid for pid in w1_pids if _alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in w1_pids if _alive(pid)], "a process of the killed worker survived"
        assert _job(job.pk, t.pk).status == "running"  # nobody finished it: the lease will expire
        # The dead worker's newest checkpoints are broken before anyone resumes: the loader must
        # skip every one of them and resume from the newest real one.
        newest_real_step, planted = _plant_corrupt_checkpoints(job, clean, tmp_path / "planted")

        w2 = _start_worker(worker_env, log, "w2")
        procs.append(w2)
        requeued_at: list[float] = []

        def beat() -> None:  # the beat task's pass
            if scheduler.schedule().requeued and not requeued_at:
                requeued_at.append(time.monotonic())

        _wait("the second attempt", lambda: _job(job.pk, t.pk).attempts >= 2, 120, log, tick=beat)
        resumed_after = time.monotonic() - killed_at
        # Who claimed it: the lease owner names the claiming process; it must be the second worker's.
        second_owner = _job(job.pk, t.pk).lease_owner
        w2_pids = _process_tree(w2)
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
        skipped_names = {ln.split()[3].rstrip(":") for ln in lines if ln.startswith("skipped corrupt checkpoint ")}
        from workers.training.checkpoint import checkpoint_name

        corrupt_skipped = sum(checkpoint_name(step) in skipped_names for step in planted)
        corrupt_loaded = sum(step == resume_step for step in planted)
        starts = _job_audit(job, "job.started")
        requeues = _job_audit(job, "job.requeued")
        claimed_by_first = _owner_pid(first_owner) in w1_pids
        claimed_by_second = _owner_pid(second_owner) in w2_pids and second_owner != first_owner
        redelivered = (
            claimed_by_first
            and claimed_by_second
            and [s.get("attempt") for s in starts][:2] == [1, 2]
            and len(requeues) >= 1
            and bool(requeued_at)
        )
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

        sent = [run_job.apply_async(args=(t.pk, job.pk), queue="cpu").id for _ in range(3)]

        def ignored() -> int:
            with platform_scope():
                return AuditEvent.all_tenants.filter(action="job.delivery_ignored").count() - ignored_before

        _wait("three duplicate deliveries", lambda: ignored() >= len(sent), 120, log)
        deliveries_ignored = ignored()
        after = _job(job.pk, t.pk)
        with tenant_scope(t.pk):
            models = ModelVersion.objects.filter(job_id=job.pk).count()
        watched = ("status", "attempts", "finished_at", "lease_owner", "result")
        state_changes = sum(getattr(after, f) != getattr(done, f) for f in watched)
    finally:
        for p in procs:
            if p.poll() is None:
                _kill9(p)

    interval = SPEC["checkpoint_every_steps"]
    ok7 = bool(resumed) and lost_steps <= interval and delta_pp <= 0.5 and identical
    ok7 = ok7 and corrupt_loaded == 0 and corrupt_skipped == len(planted) and resume_step == newest_real_step
    write_report(
        "WRK-7",
        {
            "scenario": "kill -9 of a Celery worker (its whole process group) mid-training; real Redis broker",
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
            "newest_real_checkpoint_step": newest_real_step,
            "corrupt_checkpoints_planted": planted,
            "corrupt_checkpoints_skipped": corrupt_skipped,
            "corrupt_checkpoints_loaded": corrupt_loaded,
            "note": "20 random-step kills of the training process: reports/WRK-7-steps.json",
        },
        ok7,
    )
    # At least the three sent (a scheduler re-enqueue that raced the second claim is one more no-op).
    ok3 = models == 1 and state_changes == 0 and deliveries_ignored >= len(sent)
    write_report(
        "WRK-3",
        {
            "duplicate_deliveries": len(sent),
            "duplicate_deliveries_ignored": deliveries_ignored,
            "state_changes_caused": state_changes,
            "fields_compared": list(watched),
            "model_versions": models,
        },
        ok3,
    )
    assert corrupt_loaded == 0 and corrupt_skipped == len(planted), (planted, skipped_names, resume_step)
    assert resume_step == newest_real_step, (resume_step, newest_real_step)
    assert lost_steps <= interval, (seen_before_kill, resume_step)
    assert delta_pp <= 0.5 and identical
    assert ok3
    # WRK-2: the broker's own redelivery waits for visibility_timeout, which must exceed the
    # longest task (its hard time limit): the scheduler's lease-based re-enqueue is what resumed it.
    vt = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    ok2 = redelivered and vt > settings.CELERY_TASK_TIME_LIMIT and resumed_after < 60
    write_report(
        "WRK-2",
        {
            "redelivered": redelivered,
            "first_claim_by_killed_worker": claimed_by_first,
            "second_claim_by_second_worker": claimed_by_second,
            "claims": [s.get("attempt") for s in starts],
            "scheduler_requeues": len(requeues),
            "seconds_to_redelivery": round(resumed_after, 2),
            "mechanism": "scheduler re-enqueues on expired lease (broker redelivery would wait visibility_timeout)",
            "visibility_timeout_s": vt,
            "task_time_limit_s": settings.CELERY_TASK_TIME_LIMIT,
            "margin_s": vt - settings.CELERY_TASK_TIME_LIMIT,
        },
        ok2,
    )
    assert redelivered, (first_owner, second_owner, starts, requeues)
    assert vt > settings.CELERY_TASK_TIME_LIMIT
    assert resumed_after < 60


def test_data_parallel_job_on_a_celery_worker(
    world: dict[str, Any],  # noqa: F811
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """world_size=2 on a `--pool solo` worker: the task process starts its two rank processes."""
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
