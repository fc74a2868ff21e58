"""Training jobs, the writes a user makes: create (spec validated, dataset access checked, admission
decided in the same transaction) and cancel (cooperative)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.common.exceptions import Conflict, Invalid, NotFound
from apps.tenancy.models import Tenant
from apps.training.models import TrainingJob
from apps.training.scheduler import schedule
from apps.training.selectors import usable_version
from workers.training.spec import SpecError, TrainSpec


def parse_spec(spec: dict[str, Any]) -> TrainSpec:
    """The validated spec, or :class:`Invalid` with the bad fields under ``spec.``."""
    try:
        parsed = TrainSpec.from_dict(spec)
        parsed.validate()
    except SpecError as exc:
        raise Invalid(fields={f"spec.{k}": v for k, v in exc.fields.items()} or {"spec": [str(exc)]}) from exc
    return parsed


def job_create(
    *, tenant: Tenant, created_by: Any, name: str, dataset_version_id: int, spec: dict[str, Any], priority: int = 0
) -> TrainingJob:
    parsed = parse_spec(spec)
    version = usable_version(tenant=tenant, version_id=dataset_version_id)
    if version is None:
        raise NotFound(
            reason="dataset_not_usable",
            tenant_id=tenant.pk,
            target_type="datasets.datasetversion",
            target_id=dataset_version_id,
        )
    queue = "gpu" if parsed.device == "cuda" else "cpu"
    with audited_change():
        job = TrainingJob.objects.create(
            tenant=tenant,
            name=name,
            dataset_version=version,
            spec=parsed.to_dict(),
            spec_hash=parsed.spec_hash(),
            queue=queue,
            priority=priority,
            max_restarts=settings.COHORT_JOB_MAX_RESTARTS,
            created_by=created_by if getattr(created_by, "key_id", None) is None else None,
            slots=parsed.world_size * parsed.nnodes,
            nodes=parsed.nnodes,
        )
        # Admission now, in this transaction: the response already says whether the job was
        # admitted or why it waits (its admission is recorded in job.created, not as a second
        # event); an admitted job's task is sent after commit.
        if schedule(fold=job.pk).deferred:
            # The platform's own connection cannot see this uncommitted job: its pass runs right
            # after the commit (then admits it with a job.admitted event, or records why it waits).
            TrainingJob.objects.filter(pk=job.pk).update(wait_reason="waiting for the scheduler's pass after commit")
        job.refresh_from_db()
        audit_record(
            action="job.created",
            tenant=tenant,
            target=job,
            details={
                "dataset_version_id": version.pk,
                "model": parsed.model.name,
                "queue": queue,
                "admitted": job.admitted_at is not None,
                "wait_reason": job.wait_reason,
            },
        )
    return job


def job_cancel(*, tenant: Tenant, job: TrainingJob) -> TrainingJob:
    """Cooperative: a queued job is cancelled at once; a running one stops at its next check."""
    if job.status in TrainingJob.TERMINAL:
        raise Conflict(f"This job is already {job.status}.")
    with audited_change():
        if job.status == TrainingJob.Status.QUEUED:
            TrainingJob.objects.filter(pk=job.pk).update(
                status=TrainingJob.Status.CANCELLED,
                status_reason="cancelled before it started",
                cancel_requested=True,
                finished_at=timezone.now(),
            )
        else:
            TrainingJob.objects.filter(pk=job.pk).update(cancel_requested=True)
        audit_record(action="job.cancel_requested", tenant=tenant, target=job, details={"was": job.status})
    job.refresh_from_db()
    if job.status == TrainingJob.Status.CANCELLED:
        schedule()  # its slot (if it was admitted) goes to the next job
    return job
