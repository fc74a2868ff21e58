"""Access helpers for training objects (missing and foreign answer the same 404)."""

from __future__ import annotations

from apps.common.exceptions import NotFound
from apps.tenancy.models import Tenant
from apps.training.models import ModelVersion, TrainingJob


def access_job(*, tenant: Tenant, job_id: int) -> TrainingJob:
    job = TrainingJob.objects.filter(pk=job_id).first()
    if job is None:
        raise NotFound(reason="not_found", tenant_id=tenant.pk, target_type="training.trainingjob", target_id=job_id)
    return job


def access_model(*, tenant: Tenant, model_id: int) -> ModelVersion:
    mv = ModelVersion.objects.filter(pk=model_id).select_related("data_key").first()
    if mv is None:
        raise NotFound(reason="not_found", tenant_id=tenant.pk, target_type="training.modelversion", target_id=model_id)
    return mv
