"""Running a job: the body of the ``training.run_job`` task.

* **Claim** by a conditional update (queued, or running with an expired lease after a worker died),
  so a duplicate delivery is a no-op and a redelivery after kill -9 resumes.
* **Gate**: the dataset must be the tenant's own de-identified version or one it holds a live
  ``process`` grant on, checked at start and then every ``STOP_CHECK_SECONDS`` from the training
  loop (cancellation and grant revocation stop the run at the next optimizer step after that).
* **Data** is decrypted in memory from the encrypted version (never written in plaintext).
* **Checkpoints** are encrypted, atomic and checksummed (``workers.training.checkpoint``), under a
  data key fixed for the job's life; a redelivered task resumes from the newest valid one.
* **Errors** are classified (:func:`classify_failure`): a :class:`~apps.common.exceptions.RunFailed`
  (bad spec, bad data, out of memory) fails the job at once with an envelope (type, message, last
  log lines); anything else is :class:`~apps.common.exceptions.Retryable` and is raised so the
  broker redelivers, up to ``max_restarts``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.common.exceptions import DomainError, Retryable, RunFailed
from apps.tenancy.scope import tenant_scope
from apps.training.models import JobEvent, TrainingJob
from apps.training.scheduler import schedule
from apps.training.services.distributed import lead_nodes, train_distributed
from apps.training.services.events import append_event
from apps.training.services.inputs import STOP_CHECK_SECONDS, checkpoint_location, load_data, load_table, usable
from apps.training.services.lease import Lease, LeaseLost
from apps.training.services.registry import register_model, register_simulation_model
from apps.training.services.sink import DjangoSink
from apps.vault import services as vault
from apps.vault.models import DataKey
from workers.training.privacy import job_dp_config
from workers.training.spec import SpecError, TrainSpec

logger = logging.getLogger(__name__)

# Failures a retry cannot fix (besides RunFailed itself and running out of device memory); the
# engine's DataError (bad data) is a ValueError.
NOT_RETRIED: tuple[type[BaseException], ...] = (SpecError, ValueError, KeyError, TypeError)


class JobAccessLost(Exception):
    """The job's dataset is no longer usable by its tenant (grant revoked or expired, deleted)."""


def classify_failure(exc: BaseException) -> DomainError:
    """The retry policy: :class:`RunFailed` for what cannot succeed on retry, else :class:`Retryable`.
    A domain error raised as one is kept as it is."""
    if isinstance(exc, Retryable | RunFailed):
        return exc
    message = f"{type(exc).__name__}: {str(exc)[:200]}"
    import torch

    if isinstance(exc, (*NOT_RETRIED, torch.OutOfMemoryError)):
        return RunFailed(message)
    return Retryable(message)


def claim(tenant_id: int, job_id: int) -> TrainingJob | None:
    """Take the job for this worker: queued, or running with an expired lease (its worker died).
    Returns None for a duplicate delivery or a finished job."""
    now = timezone.now()
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with tenant_scope(tenant_id), audited_change():
        n = TrainingJob.objects.filter(
            Q(status=TrainingJob.Status.QUEUED)
            | Q(status=TrainingJob.Status.RUNNING, lease_until__lt=now)
            | Q(status=TrainingJob.Status.RUNNING, lease_until__isnull=True),
            pk=job_id,
            cancel_requested=False,
            admitted_at__isnull=False,  # only the scheduler starts jobs: a stray message cannot
        ).update(
            status=TrainingJob.Status.RUNNING,
            attempts=F("attempts") + 1,
            lease_owner=owner,
            lease_until=now + timedelta(seconds=settings.COHORT_JOB_LEASE_SECONDS),
            started_at=now,
        )
        job = TrainingJob.objects.select_related("tenant").filter(pk=job_id).first()
        if not n or job is None:
            audit_record(action="job.delivery_ignored", tenant=tenant_id, details={"job": job_id})
            return None
        audit_record(action="job.started", tenant=job.tenant_id, target=job, details={"attempt": job.attempts})
    return job


def finish(
    job: TrainingJob,
    status: str,
    reason: str,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    lease: Lease | None = None,
) -> bool:
    """Finish the job if this worker still holds it (fenced by the lease owner); then let the
    scheduler hand its slot on. False when another worker took the job over meanwhile."""
    with tenant_scope(job.tenant_id), audited_change():
        done = TrainingJob.objects.filter(
            pk=job.pk, lease_owner=job.lease_owner, status=TrainingJob.Status.RUNNING
        ).update(
            status=status,
            status_reason=reason[:300],
            result=result or {},
            error=error or {},
            finished_at=timezone.now(),
            lease_until=None,
        )
        audit_record(
            action=f"job.{status}" if done else "job.finish_superseded",
            tenant=job.tenant_id,
            target=job,
            details={"reason": reason[:200]},
        )
        if done and job.budget_reservation_id is not None:
            settle_privacy(job, status, (result or {}).get("epsilon"))
    if lease is not None:
        lease.account()
    if done:
        append_event(job.pk, job.tenant_id, JobEvent.Kind.STATE, {"status": status, "reason": reason[:300]})
    schedule()
    return bool(done)


def settle_privacy(job: TrainingJob, status: str, epsilon: float | None) -> None:
    """A DP job's ledger reservation when it ends: a job whose engine returned (succeeded, or
    stopped cleanly by a cancel) commits the ε its accountant composed over every step it took,
    resumed ones included; a job that ran and then failed without a result (a crash, an error,
    attempts exhausted) commits the whole reservation (its steps are not all known: the
    conservative charge); one that never ran releases it."""
    from apps.datasets.models import BudgetReservation
    from apps.datasets.services import budget_settle
    from apps.tenancy.models import Tenant

    if job.budget_reservation_id is None:
        return
    res = BudgetReservation.all_tenants.filter(pk=job.budget_reservation_id).first()
    if res is None or res.state != BudgetReservation.State.RESERVED:
        return
    consumer = Tenant(pk=job.tenant_id)
    if epsilon is not None and job.started_at is not None:
        spent = min(Decimal(str(round(float(epsilon), 6))), res.epsilon)
        budget_settle(consumer=consumer, reservation=res, commit=True, epsilon_spent=spent)
    elif job.started_at is not None:
        budget_settle(consumer=consumer, reservation=res, commit=True)
    else:
        budget_settle(consumer=consumer, reservation=res, commit=False)


def run_job(tenant_id: int, job_id: int) -> str:
    """The task body. Not one transaction: every database step is its own short tenant-scoped
    transaction, so progress, leases and cancellation are visible while the job runs.
    Returns the job's final status or why nothing ran; raises :class:`Retryable` (caused by the
    original error) when the broker should deliver it again."""
    from workers.training import engine
    from workers.training.checkpoint import load_latest

    job = claim(tenant_id, job_id)
    if job is None:
        return "ignored"
    lease = Lease(job)
    if job.attempts > job.max_restarts + 1:
        finish(job, TrainingJob.Status.FAILED, f"gave up after {job.attempts - 1} attempts (max_restarts)", lease=lease)
        return TrainingJob.Status.FAILED
    spec = TrainSpec.from_dict(job.spec)
    version = usable(job)
    if version is None:
        finish(
            job,
            TrainingJob.Status.FAILED,
            "dataset not usable: grant revoked or expired, or dataset deleted",
            lease=lease,
        )
        return TrainingJob.Status.FAILED
    with tenant_scope(job.tenant_id):
        if job.checkpoint_key_id is None:
            key_obj = vault.active_key(job.tenant_id, DataKey.Purpose.DATA)
            TrainingJob.objects.filter(pk=job.pk).update(checkpoint_key=key_obj)
        else:
            key_obj = DataKey.objects.get(pk=job.checkpoint_key_id)
    ckpt_dir, context = checkpoint_location(job.tenant_id, job.pk)
    sink = DjangoSink(job, ckpt_dir, vault.material(key_obj), context)
    sink.lease = lease
    last_check = [0.0]
    stop_reason: list[str] = []

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last_check[0] < STOP_CHECK_SECONDS:
            return False
        last_check[0] = now
        with tenant_scope(job.tenant_id):
            cancelled = TrainingJob.objects.filter(pk=job.pk, cancel_requested=True).exists()
        if cancelled:
            stop_reason.append("cancelled")
            return True
        if usable(job) is None:
            stop_reason.append("grant_revoked")
            return True
        if not lease.renew():
            stop_reason.append("lease_lost")
            return True
        return False

    if job.kind == TrainingJob.Kind.SIMULATE:
        return _run_simulation(job, version, sink, lease, should_stop, stop_reason)
    try:
        prepared = load_data(job, version, spec)
        if not lease.renew(force=True):
            raise LeaseLost("the lease expired while the data was loading")
        resume = None
        found = load_latest(
            ckpt_dir,
            key=sink.key,
            context=context,
            on_corrupt=lambda p, r: sink.on_log(f"skipped corrupt checkpoint {p.name}: {r}"),
        )
        if found is not None:
            resume = engine.TrainState.from_dict(found[0])
            sink.on_log(f"resuming from checkpoint at step {found[1].step} (attempt {job.attempts})")
        if spec.nnodes > 1:
            result = lead_nodes(job, spec, prepared, sink, resume, should_stop)
        elif spec.world_size > 1:
            result = train_distributed(job, spec, prepared, sink, resume, should_stop)
        else:
            privacy = job_dp_config(spec, int(version.rows or 0)) if spec.privacy is not None else None
            result = engine.train(spec, prepared, sink, resume=resume, should_stop=should_stop, privacy=privacy)
        sink.flush()
    except LeaseLost as exc:
        lease.account()
        logger.warning("job %s: %s; the new owner carries on", job.pk, exc)
        return "superseded"
    except Exception as exc:
        failure = classify_failure(exc)
        if isinstance(failure, RunFailed) or job.attempts > job.max_restarts:
            kind = type(exc).__name__
            finish(
                job,
                TrainingJob.Status.FAILED,
                f"{kind}: {str(exc)[:200]}",
                error={"type": kind, "message": str(exc)[:500], "last_log_lines": list(sink.log_tail)},
                lease=lease,
            )
            return TrainingJob.Status.FAILED
        lease.account()
        if failure is exc:
            raise
        raise failure from exc  # transient: the broker redelivers (acks_late), the next attempt resumes
    if result.status == "stopped":
        if not stop_reason:  # another node asked the group to stop (it saw the cancel first)
            last_check[0] = 0.0
            should_stop()
        reason = stop_reason[0] if stop_reason else "stopped"
        if reason == "lease_lost":
            lease.account()
            return "superseded"
        status = TrainingJob.Status.CANCELLED if reason == "cancelled" else TrainingJob.Status.FAILED
        stopped: dict[str, Any] = {"steps": result.steps, "epochs": result.epochs}
        if spec.privacy is not None and result.epsilon is not None:  # a clean stop knows its steps
            stopped |= {"epsilon": result.epsilon, "delta": spec.privacy.delta}
        finish(job, status, reason, result=stopped, lease=lease)
        return status
    if not lease.renew(force=True):
        lease.account()
        return "superseded"
    model = register_model(job, spec, prepared, result, version)
    finish(
        job,
        TrainingJob.Status.SUCCEEDED,
        result.status,
        result={
            "final_metrics": result.final_metrics,
            "best_metrics": result.best_metrics,
            "steps": result.steps,
            "epochs": result.epochs,
            "samples_per_second": result.samples_per_second,
            "device": result.device,
            "model_version_id": model.pk,
            **({"epsilon": result.epsilon, "delta": spec.privacy.delta} if spec.privacy is not None else {}),
        },
        lease=lease,
    )
    return TrainingJob.Status.SUCCEEDED


def _run_simulation(
    job: TrainingJob,
    version: Any,
    sink: DjangoSink,
    lease: Lease,
    should_stop: Any,
    stop_reason: list[str],
) -> str:
    """A federation spec over seeded virtual sites of the job's own version, in this process
    (``workers.federated.simulate``): one job event per round, the global model registered with the
    split in its lineage. Deterministic, so a redelivered task simply runs it again."""
    from workers.federated.simulate import SimulationError, SplitSpec, run, simulation_secret, split_sites
    from workers.federated.spec import FederationSpec
    from workers.schema import DatasetSchema

    sim = job.simulation
    try:
        fspec = FederationSpec.from_dict(sim["federation_spec"])
        split = SplitSpec.from_dict(sim["split"])
        if version.format == "zip":
            raise SimulationError("Simulation runs on tabular and text data; this version holds images.", "dataset")
        schema = DatasetSchema.from_dict(version.schema)
        sites = split_sites(load_table(job, version), schema, split)
        if not lease.renew(force=True):
            raise LeaseLost("the lease expired while the data was loading")
        how = split.partition + (f", alpha {split.alpha}" if split.partition == "dirichlet" else "")
        sink.on_log(
            f"simulating {fspec.rounds} rounds of {fspec.strategy.name} over {split.sites} virtual sites ({how})"
        )

        def on_round(r: dict[str, Any]) -> None:
            sink.on_round(r["round"], r["metrics"])
            sink.on_log(f"round {r['round']}: {len(r['participants'])} updates aggregated in {r['seconds']} s")

        result = run(fspec, sites, schema, secret=simulation_secret(fspec, split), federation_id=job.pk,
                     local_baseline=bool(sim.get("local_baseline")), on_round=on_round,
                     should_stop=should_stop)  # fmt: skip
        sink.flush()
    except LeaseLost as exc:
        lease.account()
        logger.warning("job %s: %s; the new owner carries on", job.pk, exc)
        return "superseded"
    except Exception as exc:
        failure = classify_failure(exc) if not isinstance(exc, SimulationError) else RunFailed(str(exc))
        if isinstance(failure, RunFailed) or job.attempts > job.max_restarts:
            kind = type(exc).__name__
            finish(job, TrainingJob.Status.FAILED, f"{kind}: {str(exc)[:200]}",
                   error={"type": kind, "message": str(exc)[:500], "last_log_lines": list(sink.log_tail)},
                   lease=lease)  # fmt: skip
            return TrainingJob.Status.FAILED
        lease.account()
        if failure is exc:
            raise
        raise failure from exc
    if result.status == "stopped":
        reason = stop_reason[0] if stop_reason else "stopped"
        if reason == "lease_lost":
            lease.account()
            return "superseded"
        status = TrainingJob.Status.CANCELLED if reason == "cancelled" else TrainingJob.Status.FAILED
        finish(job, status, reason, result={"rounds": len(result.rounds)}, lease=lease)
        return status
    if not lease.renew(force=True):
        lease.account()
        return "superseded"
    model = register_simulation_model(job, fspec, split.to_dict(), result, version)
    finish(job, TrainingJob.Status.SUCCEEDED, "completed",
           result={**result.to_dict(), "model_version_id": model.pk}, lease=lease)  # fmt: skip
    return TrainingJob.Status.SUCCEEDED
