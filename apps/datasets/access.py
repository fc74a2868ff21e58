"""Access helpers for datasets: the only way an API fetches one dataset object. Missing and
foreign objects raise the same 404 (:func:`apps.common.access.get_or_deny`)."""

from __future__ import annotations

from apps.common.access import get_or_deny
from apps.datasets.models import BudgetReservation, Dataset, DatasetGrant, DatasetVersion, UploadSession
from apps.tenancy.models import Tenant


def access_dataset(*, tenant: Tenant, dataset_id: int, include_deleted: bool = False) -> Dataset:
    qs = Dataset.objects.all()
    if not include_deleted:
        qs = qs.filter(status=Dataset.Status.ACTIVE)
    return get_or_deny(qs, dataset_id, tenant=tenant)


def access_version(*, tenant: Tenant, dataset: Dataset, version_id: int) -> DatasetVersion:
    return get_or_deny(DatasetVersion.objects.select_related("data_key"), version_id, tenant=tenant, dataset=dataset)


def access_upload(*, tenant: Tenant, upload_id: int) -> UploadSession:
    return get_or_deny(UploadSession.objects.select_related("dataset"), upload_id, tenant=tenant)


def access_grant(*, tenant: Tenant, dataset: Dataset, grant_id: int) -> DatasetGrant:
    return get_or_deny(DatasetGrant.objects.select_related("grantee"), grant_id, tenant=tenant, dataset=dataset)


def access_reservation(*, tenant: Tenant, dataset: Dataset, reservation_id: int) -> BudgetReservation:
    """A reservation the tenant in scope may settle: one it made itself (as owner or grantee)."""
    qs = BudgetReservation.all_tenants.select_related("budget")
    return get_or_deny(qs, reservation_id, tenant=tenant, budget__dataset_id=dataset.pk, consumer_id=tenant.pk)
