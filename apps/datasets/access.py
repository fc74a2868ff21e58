"""Access helpers for datasets: the only way an API fetches one dataset object. Missing and
foreign objects raise the same AccessDenied (404)."""

from __future__ import annotations

from apps.common.errors import AccessDenied
from apps.datasets.models import BudgetReservation, Dataset, DatasetGrant, DatasetVersion, UploadSession
from apps.tenancy.models import Tenant


def _deny(tenant: Tenant, target_type: str, target_id: int) -> AccessDenied:
    return AccessDenied(reason="not_found", tenant_id=tenant.pk, target_type=target_type, target_id=target_id)


def access_dataset(*, tenant: Tenant, dataset_id: int, include_deleted: bool = False) -> Dataset:
    qs = Dataset.objects.filter(pk=dataset_id)
    if not include_deleted:
        qs = qs.filter(status=Dataset.Status.ACTIVE)
    ds = qs.first()
    if ds is None:
        raise _deny(tenant, "datasets.dataset", dataset_id)
    return ds


def access_version(*, tenant: Tenant, dataset: Dataset, version_id: int) -> DatasetVersion:
    v = DatasetVersion.objects.filter(pk=version_id, dataset=dataset).select_related("data_key").first()
    if v is None:
        raise _deny(tenant, "datasets.datasetversion", version_id)
    return v


def access_upload(*, tenant: Tenant, upload_id: int) -> UploadSession:
    s = UploadSession.objects.filter(pk=upload_id).select_related("dataset").first()
    if s is None:
        raise _deny(tenant, "datasets.uploadsession", upload_id)
    return s


def access_grant(*, tenant: Tenant, dataset: Dataset, grant_id: int) -> DatasetGrant:
    g = DatasetGrant.objects.filter(pk=grant_id, dataset=dataset).select_related("grantee").first()
    if g is None:
        raise _deny(tenant, "datasets.datasetgrant", grant_id)
    return g


def access_reservation(*, tenant: Tenant, dataset: Dataset, reservation_id: int) -> BudgetReservation:
    """A reservation the tenant in scope may settle: one it made itself (as owner or grantee)."""
    r = (
        BudgetReservation.all_tenants.filter(pk=reservation_id, budget__dataset_id=dataset.pk, consumer_id=tenant.pk)
        .select_related("budget")
        .first()
    )
    if r is None:
        raise _deny(tenant, "datasets.budgetreservation", reservation_id)
    return r
