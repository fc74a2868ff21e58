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
    version = _usable(tenant, dataset_version_id)
    return _create(
        tenant=tenant, created_by=created_by, name=name, version=version, parsed=parsed, spec_hash=parsed.spec_hash(),
        priority=priority, kind=TrainingJob.Kind.TRAIN, simulation={},
        details={"model": parsed.model.name},
    )  # fmt: skip


def simulation_create(
    *,
    tenant: Tenant,
    created_by: Any,
    name: str,
    dataset_version_id: int,
    spec: dict[str, Any],
    split: dict[str, Any],
    local_baseline: bool = False,
    priority: int = 0,
) -> TrainingJob:
    """A federation spec as a job on the tenant's **own** version, split into seeded virtual sites
    (``workers.federated.simulate``). The spec is validated for the split's training sites; the
    job is admitted and runs like any other (quotas, fair share, cancel, the job stream)."""
    from workers.federated.simulate import SimulationError, SplitSpec
    from workers.federated.spec import FederationSpec

    try:
        split_spec = SplitSpec.from_dict(split)
    except SimulationError as exc:
        raise Invalid(fields={f"split.{exc.field}" if exc.field else "split": [str(exc)]}) from exc
    except TypeError as exc:
        raise Invalid(fields={"split": [str(exc)[:200]]}) from exc
    trainers = split_spec.sites - split_spec.evaluation_sites
    try:
        fspec = FederationSpec.from_dict(spec)
        fspec.validate(n_sites=trainers)
    except SpecError as exc:
        raise Invalid(fields={f"spec.{k}": v for k, v in exc.fields.items()} or {"spec": [str(exc)]}) from exc
    version = _usable(tenant, dataset_version_id)
    if version.tenant_id != tenant.pk:
        raise Invalid(
            fields={
                "dataset_version": [
                    "A simulation runs on your own data; a granted dataset takes part in a "
                    "federation, through its owner's approval."
                ]
            }
        )
    if fspec.dp.mode == "local":  # each virtual site's rows: the smallest share of the split
        try:
            fspec.check_dp_against_rows(max(1, int(version.rows or 0) // split_spec.sites))
        except SpecError as exc:
            raise Invalid(fields={f"spec.{k}": v for k, v in exc.fields.items()}) from exc
    return _create(
        tenant=tenant, created_by=created_by, name=name, version=version, parsed=fspec.train,
        spec_hash=fspec.spec_hash(), priority=priority, kind=TrainingJob.Kind.SIMULATE,
        simulation={"federation_spec": fspec.to_dict(), "split": split_spec.to_dict(),
                    "local_baseline": bool(local_baseline)},
        details={"model": fspec.train.model.name, "strategy": fspec.strategy.name, "split": split_spec.to_dict()},
    )  # fmt: skip


def _usable(tenant: Tenant, dataset_version_id: int) -> Any:
    version = usable_version(tenant=tenant, version_id=dataset_version_id)
    if version is None:
        raise NotFound(
            reason="dataset_not_usable",
            tenant_id=tenant.pk,
            target_type="datasets.datasetversion",
            target_id=dataset_version_id,
        )
    return version


def _create(
    *,
    tenant: Tenant,
    created_by: Any,
    name: str,
    version: Any,
    parsed: TrainSpec,
    spec_hash: str,
    priority: int,
    kind: str,
    simulation: dict[str, Any],
    details: dict[str, Any],
) -> TrainingJob:
    queue = "gpu" if parsed.device == "cuda" else "cpu"
    with audited_change():
        job = TrainingJob.objects.create(
            tenant=tenant,
            name=name,
            kind=kind,
            simulation=simulation,
            dataset_version=version,
            spec=parsed.to_dict(),
            spec_hash=spec_hash,
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
                "kind": kind,
                **details,
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
