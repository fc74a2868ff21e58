"""Reads for tenants and memberships."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.tenancy.models import Invitation, Membership, Tenant
from apps.tenancy.scope import set_db_context


def tenant_list_for_user(*, user: object) -> QuerySet[Tenant]:
    """Tenants where ``user`` is a member (RLS lets a user see their own memberships)."""
    set_db_context(user_id=user.pk)  # type: ignore[attr-defined]
    ids = Membership.all_tenants.filter(user_id=user.pk).values_list("tenant_id", flat=True)  # type: ignore[attr-defined]
    return Tenant.objects.filter(pk__in=list(ids)).order_by("slug")


def membership_for(*, tenant_id: int, user_id: int) -> Membership | None:
    """The membership of ``user_id`` in ``tenant_id`` (visible through the user-id RLS clause)."""
    set_db_context(user_id=user_id)
    return Membership.all_tenants.filter(tenant_id=tenant_id, user_id=user_id).first()


def membership_list(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.filter(tenant=tenant).select_related("user")


def invitation_list(*, tenant: Tenant) -> QuerySet[Invitation]:
    return Invitation.objects.filter(tenant=tenant)
