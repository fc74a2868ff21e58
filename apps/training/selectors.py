"""Training reads (the tenant's own jobs, events and models; the dataset versions a job may train
on; quotas and usage)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import QuerySet, Sum
from django.utils import timezone

from apps.datasets import selectors as dataset_selectors
from apps.datasets.models import DatasetVersion
from apps.tenancy.models import Tenant
from apps.training.models import JobEvent, ModelVersion, ResourceUsage, TrainingJob, TrainingQuota

ACTIVE = (TrainingJob.Status.QUEUED, TrainingJob.Status.RUNNING)
QUOTA_FIELDS = ("max_concurrent_jobs", "max_cpu_jobs", "gpu_hours_per_month", "max_site_tasks")


@dataclass(frozen=True)
class Quota:
    max_concurrent_jobs: int
    max_cpu_jobs: int
    gpu_hours_per_month: float
    max_site_tasks: int


def month_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date().replace(day=1)


def quota_from(row: TrainingQuota | None) -> Quota:
    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return Quota(
        max_concurrent_jobs=int(pick(row and row.max_concurrent_jobs, settings.COHORT_QUOTA_CONCURRENT_JOBS)),
        max_cpu_jobs=int(pick(row and row.max_cpu_jobs, settings.COHORT_QUOTA_CPU_JOBS)),
        gpu_hours_per_month=float(pick(row and row.gpu_hours_per_month, settings.COHORT_QUOTA_GPU_HOURS)),
        max_site_tasks=int(pick(row and row.max_site_tasks, settings.COHORT_QUOTA_SITE_TASKS)),
    )


def effective_quota(tenant_id: int) -> Quota:
    """The tenant's quota (call in the tenant's scope)."""
    return quota_from(TrainingQuota.objects.filter(tenant_id=tenant_id).first())


def plain(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


def job_list(*, tenant: Tenant, status: str = "") -> QuerySet[TrainingJob]:
    qs = TrainingJob.objects.filter(tenant=tenant)
    return qs.filter(status=status) if status else qs


def job_model_version_id(job: TrainingJob) -> int | None:
    """The model version a job registered (None until it succeeded)."""
    return ModelVersion.objects.filter(job=job).values_list("pk", flat=True).first()


def usable_version(*, tenant: Tenant, version_id: int) -> DatasetVersion | None:
    """A ready de-identified version the tenant owns or holds a live ``process`` grant on."""
    version = (
        DatasetVersion.all_tenants.filter(
            pk=version_id, kind=DatasetVersion.Kind.DEIDENTIFIED, status=DatasetVersion.Status.READY
        )
        .select_related("dataset")
        .first()
    )
    if version is None:
        return None
    if not dataset_selectors.dataset_access(consumer=tenant, dataset_id=version.dataset_id, permission="process"):
        return None
    return version


def job_events(*, job: TrainingJob, after: int = 0, kind: str = "") -> QuerySet[JobEvent]:
    qs = JobEvent.objects.filter(job=job, seq__gt=after)
    return qs.filter(kind=kind) if kind else qs


def training_catalogue() -> dict[str, Any]:
    """The registry a TrainSpec names models from, with the optimizers, schedules and defaults."""
    from workers.training import models as registry
    from workers.training.spec import OPTIMIZERS, SCHEDULES, TrainSpec

    defaults = TrainSpec().to_dict()
    for k in ("device", "num_threads", "nnodes", "data"):
        defaults.pop(k, None)
    return {
        "models": registry.catalogue(),
        "optimizers": list(OPTIMIZERS),
        "schedules": list(SCHEDULES),
        "defaults": defaults,
    }


def model_list(*, tenant: Tenant, name: str = "") -> QuerySet[ModelVersion]:
    qs = ModelVersion.objects.filter(tenant=tenant)
    return qs.filter(name=name) if name else qs


def usage_hours(tenant_id: int, resource: str, month: date) -> float:
    """Hours used (tenant scope)."""
    total = ResourceUsage.objects.filter(tenant_id=tenant_id, month=month, resource=resource).aggregate(
        s=Sum("seconds")
    )["s"]
    return float(total or 0.0) / 3600.0


def tenant_overview(tenant_id: int) -> dict[str, Any]:
    """The tenant's quota, usage and waiting jobs (tenant scope)."""
    now = timezone.now()
    month = month_of(now)
    row = TrainingQuota.objects.filter(tenant_id=tenant_id).first()
    active = TrainingJob.objects.filter(status__in=ACTIVE, admitted_at__isnull=False)
    return {
        "quota": asdict(quota_from(row)),
        "overrides": {f: plain(getattr(row, f)) for f in QUOTA_FIELDS} if row else {f: None for f in QUOTA_FIELDS},
        "usage": {
            "month": f"{month:%Y-%m}",
            "running_jobs": active.count(),
            "running_cpu_jobs": active.filter(queue="cpu").count(),
            "gpu_hours": round(usage_hours(tenant_id, "gpu", month), 4),
            "cpu_hours": round(usage_hours(tenant_id, "cpu", month), 4),
        },
        "waiting_jobs": TrainingJob.objects.filter(status=TrainingJob.Status.QUEUED, admitted_at__isnull=True).count(),
    }
