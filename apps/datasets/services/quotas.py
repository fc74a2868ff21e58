"""Per-tenant storage quotas: limits, usage, and the check every write that adds bytes makes."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.db.models import Sum

from apps.datasets.models import Dataset, DatasetQuota, DatasetVersion, UploadSession
from apps.datasets.services.common import _reject
from apps.tenancy.models import Tenant


def quota_for(tenant: Tenant) -> tuple[int, int]:
    """(max bytes stored, max live datasets) for the tenant."""
    q = DatasetQuota.objects.filter(tenant=tenant).first()
    max_bytes = q.max_bytes if q and q.max_bytes is not None else settings.COHORT_DATASET_QUOTA_BYTES
    max_count = q.max_datasets if q and q.max_datasets is not None else settings.COHORT_DATASET_QUOTA_COUNT
    return int(max_bytes), int(max_count)


def usage_for(tenant: Tenant) -> tuple[int, int]:
    """(bytes stored in live versions plus the declared size of open upload sessions, live
    datasets). Open sessions count in full from the start, so parallel sessions cannot jointly
    exceed the quota by filling up later."""
    stored = (
        DatasetVersion.objects.filter(tenant=tenant)
        .exclude(status=DatasetVersion.Status.PURGED)
        .aggregate(n=Sum("stored_bytes"))["n"]
        or 0
    )
    staged = (
        UploadSession.objects.filter(tenant=tenant, status=UploadSession.Status.OPEN).aggregate(n=Sum("size"))["n"] or 0
    )
    count = Dataset.objects.filter(tenant=tenant, status=Dataset.Status.ACTIVE).count()
    return int(stored) + int(staged), count


def _lock_tenant_quota(tenant: Tenant) -> None:
    """Serialise quota checks of one tenant (two uploads must not both pass a check that only
    one of them fits)."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('cohort-quota'), %s::int)", [tenant.pk % 2**31])


def check_quota(tenant: Tenant, *, adding_bytes: int = 0, adding_dataset: bool = False) -> None:
    _lock_tenant_quota(tenant)
    max_bytes, max_count = quota_for(tenant)
    used_bytes, count = usage_for(tenant)
    if adding_dataset and count + 1 > max_count:
        _reject(
            tenant,
            "quota_exceeded",
            f"The tenant already has {count} datasets; its quota is {max_count}.",
            {"quota": "datasets", "limit": max_count, "used": count},
            action="dataset.quota_exceeded",
        )
    if adding_bytes and used_bytes + adding_bytes > max_bytes:
        _reject(
            tenant,
            "quota_exceeded",
            f"Storing {adding_bytes} more bytes would exceed the tenant's quota of {max_bytes} bytes.",
            {"quota": "bytes", "limit": max_bytes, "used": used_bytes, "requested": adding_bytes},
            action="dataset.quota_exceeded",
        )
