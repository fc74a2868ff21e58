"""Access helpers for training objects (missing and foreign answer the same 404)."""

from __future__ import annotations

from apps.common.access import get_or_deny
from apps.tenancy.models import Tenant
from apps.training.models import ModelVersion, TrainingJob


def access_job(*, tenant: Tenant, job_id: int) -> TrainingJob:
    return get_or_deny(TrainingJob.objects.all(), job_id, tenant=tenant)


def access_model(*, tenant: Tenant, model_id: int) -> ModelVersion:
    return get_or_deny(ModelVersion.objects.select_related("data_key"), model_id, tenant=tenant)
