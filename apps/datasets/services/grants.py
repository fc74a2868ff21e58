"""Grants: share a dataset with another tenant (`process`, `download`) and revoke it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.audit.services import audit_record_both, audited_change
from apps.common.exceptions import Conflict, Invalid
from apps.datasets.models import Dataset, DatasetGrant, DatasetVersion
from apps.datasets.services.common import _user_or_none
from apps.datasets.services.events import grant_event
from apps.tenancy.models import Tenant


def grant_create(
    *,
    tenant: Tenant,
    dataset: Dataset,
    grantee: Tenant,
    permission: str,
    created_by: Any,
    expires_at: datetime | None = None,
    note: str = "",
    epsilon_allotment: Decimal | None = None,
    delta_allotment: Decimal | None = None,
) -> DatasetGrant:
    """A grant; a ``process`` grant may carry the grantee's (ε, δ) allotment of the dataset's
    privacy budget (none: the grantee's DP uses are refused)."""
    if dataset.status != Dataset.Status.ACTIVE:
        raise Conflict("This dataset is deleted.")
    budgeted = (DatasetGrant.Permission.PROCESS, DatasetGrant.Permission.FEDERATE)
    if permission not in budgeted and (epsilon_allotment is not None or delta_allotment is not None):
        raise Invalid(
            fields={"epsilon_allotment": ["Only process and federate grants carry a privacy-budget allotment."]}
        )
    if grantee.pk == tenant.pk:
        raise Invalid(fields={"grantee": ["A tenant does not need a grant for its own dataset."]})
    if expires_at is not None and expires_at <= timezone.now():
        raise Invalid(fields={"expires_at": ["Must be in the future."]})
    now = timezone.now()
    existing = DatasetGrant.objects.filter(
        tenant=tenant, dataset=dataset, grantee=grantee, permission=permission, revoked_at__isnull=True
    ).first()
    if existing is not None and existing.is_live(now):
        raise Conflict("This tenant already holds this grant; revoke it first to change it.")
    with audited_change():
        if existing is not None:  # expired: close it so the new grant can take its place
            existing.revoked_at = existing.expires_at
            existing.save(update_fields=["revoked_at"])
        grant = DatasetGrant.objects.create(
            tenant=tenant,
            dataset=dataset,
            grantee=grantee,
            permission=permission,
            expires_at=expires_at,
            note=note,
            epsilon_allotment=epsilon_allotment,
            delta_allotment=delta_allotment,
            created_by=_user_or_none(created_by),
        )
        details = {
            "dataset_id": dataset.pk,
            "grantee": grantee.slug,
            "permission": permission,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "epsilon_allotment": None if epsilon_allotment is None else str(epsilon_allotment),
            "delta_allotment": None if delta_allotment is None else str(delta_allotment),
        }
        audit_record_both(
            actions=("grant.created", "grant.received"),
            tenants=(tenant, grantee),
            target=grant,
            details=details,
            counterparts=({}, {"owner": tenant.slug}),
        )
        grant_event(grant, grantee.slug)
    return grant


def grant_revoke(*, tenant: Tenant, grant: DatasetGrant) -> DatasetGrant:
    """Revoke at once: queries, queued and running work check the grant (``dataset_access``)."""
    if grant.revoked_at is not None:
        raise Conflict("This grant is already revoked.")
    with audited_change():
        grant.revoked_at = timezone.now()
        grant.save(update_fields=["revoked_at"])
        details = {"dataset_id": grant.dataset_id, "grantee_id": grant.grantee_id, "permission": grant.permission}
        audit_record_both(
            actions=("grant.revoked", "grant.lost"), tenants=(tenant, grant.grantee_id), target=grant, details=details
        )
        grant_event(grant)
    _notify_revoked(grant)
    return grant


def _notify_revoked(grant: DatasetGrant) -> None:
    """After commit, the grantee's live streams about the dataset check the gate and close
    (``apps.datasets.live``); running training sees the revocation at its next gate check."""
    from apps.datasets.live import publish_access_changed

    transaction.on_commit(
        lambda: publish_access_changed(grant.grantee_id, grant.dataset_id, grant_id=grant.pk, event="revoked")
    )


def shared_read_recorded(
    *, grantee: Tenant, dataset: Dataset, version: DatasetVersion, details: dict[str, Any]
) -> None:
    """A grantee read a shared version: one event on each side's chain (the grantee's
    ``dataset.shared_read`` naming the owner, the owner's ``dataset.read_by_grantee`` naming the grantee)."""
    audit_record_both(
        actions=("dataset.shared_read", "dataset.read_by_grantee"),
        tenants=(grantee, dataset.tenant_id),
        target=version,
        details={"dataset_id": dataset.pk, "version_id": version.pk, **details},
        counterparts=({"owner": dataset.tenant.slug}, {"grantee": grantee.slug}),
    )
