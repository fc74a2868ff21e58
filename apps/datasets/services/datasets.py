"""Dataset lifecycle: create, rename, soft-delete, and the retention purge."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.common.exceptions import Conflict
from apps.datasets.models import Dataset, DatasetGrant, DatasetVersion, PrivacyBudget
from apps.datasets.services.common import _user_or_none
from apps.datasets.services.events import dataset_event_append, grant_event
from apps.datasets.services.grants import _notify_revoked
from apps.datasets.services.quotas import check_quota
from apps.datasets.storage import delete_object
from apps.tenancy.models import Tenant
from apps.tenancy.scope import platform_scope


def dataset_create(*, tenant: Tenant, created_by: Any, name: str, description: str = "") -> Dataset:
    check_quota(tenant, adding_dataset=True)
    if Dataset.objects.filter(tenant=tenant, name=name, status=Dataset.Status.ACTIVE).exists():
        raise Conflict(f"A dataset named {name!r} already exists.")
    with audited_change():
        ds = Dataset.objects.create(
            tenant=tenant, name=name, description=description, created_by=_user_or_none(created_by)
        )
        PrivacyBudget.objects.create(
            tenant=tenant,
            dataset=ds,
            epsilon_total=Decimal(str(settings.COHORT_DEFAULT_EPSILON)),
            delta_total=Decimal("0.000001"),
        )
        audit_record(action="dataset.created", tenant=tenant, target=ds, details={"name": name})
    return ds


def dataset_update(*, tenant: Tenant, dataset: Dataset, **fields: Any) -> Dataset:
    changed = [k for k, v in fields.items() if getattr(dataset, k) != v]
    if not changed:
        return dataset
    if "name" in changed and (
        Dataset.objects.filter(tenant=tenant, name=fields["name"], status=Dataset.Status.ACTIVE)
        .exclude(pk=dataset.pk)
        .exists()
    ):
        raise Conflict(f"A dataset named {fields['name']!r} already exists.")
    with audited_change():
        for k in changed:
            setattr(dataset, k, fields[k])
        dataset.save(update_fields=[*changed, "updated_at"])
        audit_record(action="dataset.updated", tenant=tenant, target=dataset, details={"fields": sorted(changed)})
    return dataset


def dataset_delete(*, tenant: Tenant, dataset: Dataset) -> Dataset:
    """Soft delete: hidden at once, grants revoked, data purged after the retention period."""
    if dataset.status != Dataset.Status.ACTIVE:
        raise Conflict("This dataset is already deleted.")
    now = timezone.now()
    with audited_change():
        dataset.status = Dataset.Status.DELETED
        dataset.deleted_at = now
        dataset.purge_after = now + timedelta(days=settings.COHORT_DATASET_RETENTION_DAYS)
        dataset.save(update_fields=["status", "deleted_at", "purge_after", "updated_at"])
        dataset_event_append(dataset_id=dataset.pk, tenant_id=tenant.pk, kind="dataset", data={"status": "deleted"})
        grants = list(DatasetGrant.objects.filter(tenant=tenant, dataset=dataset, revoked_at__isnull=True))
        for grant in grants:
            grant.revoked_at = now
            grant.save(update_fields=["revoked_at"])
            grant_event(grant)
            audit_record(
                action="grant.lost",
                tenant=grant.grantee_id,
                target=grant,
                details={"dataset_id": dataset.pk, "permission": grant.permission, "reason": "dataset_deleted"},
            )
        audit_record(
            action="dataset.deleted",
            tenant=tenant,
            target=dataset,
            details={"purge_after": dataset.purge_after.isoformat(), "grants_revoked": len(grants)},
        )
    for grant in grants:
        _notify_revoked(grant)
    return dataset


def dataset_purge(*, tenant_id: int, dataset: Dataset) -> int:
    """Remove the stored data of a deleted dataset (after retention). Audited; returns objects removed."""
    removed = 0
    with audited_change():
        for v in DatasetVersion.objects.filter(tenant_id=tenant_id, dataset=dataset).exclude(
            status=DatasetVersion.Status.PURGED
        ):
            if v.storage_name:
                delete_object(v.storage_name)
                removed += 1
            if v.status in (DatasetVersion.Status.READY, DatasetVersion.Status.FAILED):
                v.status, v.storage_name, v.stored_bytes = DatasetVersion.Status.PURGED, "", 0
                v.save(update_fields=["status", "storage_name", "stored_bytes"])
        dataset.status = Dataset.Status.PURGED
        dataset.save(update_fields=["status", "updated_at"])
        audit_record(action="dataset.purged", tenant=tenant_id, target=dataset, details={"objects_removed": removed})
    return removed


def purge_expired() -> int:
    """Purge every deleted dataset past its retention period (the daily task)."""
    from apps.tenancy.scope import tenant_scope

    with platform_scope():
        due = list(
            Dataset.all_tenants.filter(status=Dataset.Status.DELETED, purge_after__lte=timezone.now()).values_list(
                "tenant_id", "pk"
            )
        )
    for tenant_id, pk in due:
        with transaction.atomic(), tenant_scope(tenant_id):
            ds = Dataset.objects.select_for_update().get(pk=pk)
            if ds.status == Dataset.Status.DELETED:
                dataset_purge(tenant_id=tenant_id, dataset=ds)
    return len(due)
