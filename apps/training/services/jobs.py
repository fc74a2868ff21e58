"""Training jobs, the writes a user makes: create (spec validated, dataset access checked, admission
decided in the same transaction) and cancel (cooperative)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.common.exceptions import BudgetExceeded, Conflict, Invalid, NotFound, Unprocessable
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
    _check_model_reads(parsed, version)
    reserve = _privacy_reservation(tenant, parsed, version, name, created_by) if parsed.privacy else None
    return _create(
        tenant=tenant, created_by=created_by, name=name, version=version, parsed=parsed, spec_hash=parsed.spec_hash(),
        priority=priority, kind=TrainingJob.Kind.TRAIN, simulation={},
        details={"model": parsed.model.name, "dp": parsed.privacy is not None}, reserve=reserve,
    )  # fmt: skip


def _check_model_reads(spec: TrainSpec, version: Any) -> None:
    """A 400 on ``spec.model.name`` when the model reads another kind of input (text, image,
    tabular) than the version holds: refused here, not on a worker after it was admitted."""
    from workers.federated.stats import input_kind
    from workers.schema import DatasetSchema
    from workers.training.models import model_inputs

    reads = model_inputs(spec.model.name)
    try:
        kind = input_kind(DatasetSchema.from_dict(version.schema or {}))
    except (KeyError, TypeError, ValueError):  # a version without a usable schema fails at load, as before
        return
    if reads is not None and reads != kind:
        raise Invalid(fields={"spec.model.name": [
            f"The model {spec.model.name!r} reads {reads} input; this dataset version is {kind} data."
        ]})  # fmt: skip


def _privacy_reservation(tenant: Tenant, spec: TrainSpec, version: Any, name: str, created_by: Any) -> Any:
    """DP-SGD: the checks that need the version's rows (400 by field), and the ledger reservation of
    the projected ε, made in the job's transaction (a 422 ``budget_exceeded`` creates nothing)."""
    from apps.datasets import selectors as dataset_selectors
    from workers.training.privacy import job_dp_config
    from workers.training.spec import PRIVACY_EPSILON_CAP

    p = spec.privacy
    assert p is not None
    rows = int(version.rows or 0)
    fields: dict[str, list[str]] = {}
    if rows < spec.batch_size:
        fields["spec.batch_size"] = [f"Poisson sampling needs batch_size <= the version's {rows} rows."]
    if p.delta >= 1 / max(1, rows):
        fields["spec.privacy.delta"] = [f"DP protects records: delta must be below 1/{rows} rows."]
    if not fields:
        try:
            config = job_dp_config(spec, rows)
        except ValueError as exc:
            fields["spec.privacy.target_epsilon"] = [str(exc)[:300]]
        else:
            cap = min(PRIVACY_EPSILON_CAP, p.target_epsilon or PRIVACY_EPSILON_CAP)
            assert config.max_epsilon is not None
            if config.max_epsilon > cap * 1.0001:
                fields["spec.privacy.noise_multiplier"] = [
                    f"The run projects epsilon = {config.max_epsilon:.3f} on {rows} rows, above "
                    f"{'the target' if p.target_epsilon else 'the platform cap'} {cap:g}: raise noise_multiplier "
                    "or lower epochs."
                ]
    if fields:
        raise Invalid(fields=fields)
    try:
        budget = dataset_selectors.budget_for(dataset=version.dataset)
    except Exception:  # no budget set: nothing to charge, so no DP job
        raise BudgetExceeded(
            f"Dataset {version.dataset_id} has no privacy budget: its owner sets one first.",
            details={"dataset_id": version.dataset_id},
        ) from None

    def reserve(job: TrainingJob) -> Any:
        from apps.datasets.services import budget_reserve

        assert config.max_epsilon is not None
        try:
            return budget_reserve(
                consumer=tenant, budget=budget, epsilon=Decimal(str(round(config.max_epsilon, 6))),
                delta=Decimal(str(p.delta)), purpose=f"job {job.pk}: {name}"[:200], reference=f"job:{job.pk}",
                created_by=created_by if getattr(created_by, "key_id", None) is None else None,
            )  # fmt: skip
        except Unprocessable as exc:
            raise BudgetExceeded(
                f"Dataset {version.dataset_id}: {exc.message}",
                details={"dataset_id": version.dataset_id, "cause": exc.code, **exc.details},
            ) from None

    return reserve


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
    from workers.federated.simulate import NO_CENTRAL_SET, SimulationError, SplitSpec
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
    if fspec.evaluation.central:
        raise Invalid(fields={"spec.evaluation.central": [NO_CENTRAL_SET]})
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
    reserve: Any = None,
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
        if reserve is not None:
            job.budget_reservation = reserve(job)
            job.save(update_fields=["budget_reservation"])
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
        if job.status == TrainingJob.Status.QUEUED and job.budget_reservation_id is not None:
            from apps.training.services.runner import settle_privacy

            settle_privacy(job, TrainingJob.Status.CANCELLED, None)  # never ran: released
        audit_record(action="job.cancel_requested", tenant=tenant, target=job, details={"was": job.status})
    job.refresh_from_db()
    if job.status == TrainingJob.Status.CANCELLED:
        schedule()  # its slot (if it was admitted) goes to the next job
    return job
