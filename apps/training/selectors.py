"""Training reads (the tenant's own jobs, events and models)."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.tenancy.models import Tenant
from apps.training.models import JobEvent, ModelVersion, TrainingJob


def job_list(*, tenant: Tenant, status: str = "") -> QuerySet[TrainingJob]:
    qs = TrainingJob.objects.filter(tenant=tenant)
    return qs.filter(status=status) if status else qs


def job_events(*, job: TrainingJob, after: int = 0, kind: str = "") -> QuerySet[JobEvent]:
    qs = JobEvent.objects.filter(job=job, seq__gt=after)
    return qs.filter(kind=kind) if kind else qs


def model_list(*, tenant: Tenant, name: str = "") -> QuerySet[ModelVersion]:
    qs = ModelVersion.objects.filter(tenant=tenant)
    return qs.filter(name=name) if name else qs
