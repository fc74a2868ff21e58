"""Reads for tenants and memberships."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.tenancy.models import Invitation, Membership, Tenant
from apps.tenancy.scope import context_mac, set_db_context


def tenant_list_for_user(*, user: object) -> QuerySet[Tenant]:
    """Tenants where ``user`` is a member (RLS lets a user see their own memberships)."""
    set_db_context(user_id=user.pk)  # type: ignore[attr-defined]
    ids = Membership.all_tenants.filter(user_id=user.pk).values_list("tenant_id", flat=True)  # type: ignore[attr-defined]
    return Tenant.objects.filter(pk__in=list(ids)).order_by("slug")


def membership_for(*, tenant_id: int, user_id: int) -> Membership | None:
    """The membership of ``user_id`` in ``tenant_id`` (visible through the user-id RLS clause)."""
    set_db_context(user_id=user_id)
    return Membership.all_tenants.filter(tenant_id=tenant_id, user_id=user_id).first()


def tenant_resolve(*, slug: str, user_id: int | None) -> tuple[Tenant | None, Membership | None]:
    """The tenant with ``slug`` and ``user_id``'s membership in it, in one round trip.

    Also sets the transaction's ``app.user_id`` (as ``membership_for`` does), so RLS shows the
    user's own membership; the database function runs as the app role under RLS.
    """
    from django.db import connection

    connection.ensure_connection()
    mac = None
    if user_id is not None:
        mac = context_mac(backend_pid=connection.connection.info.backend_pid, name="user_id", value=str(user_id))
    with connection.cursor() as cur:
        cur.execute("SELECT * FROM cohort_resolve_tenant(%s, %s, %s)", [slug, user_id, mac])
        row = cur.fetchone()
    if row is None:
        return None, None
    tid, tslug, name, status, reason, created, updated, m_id, m_role, m_created, m_updated = row
    tenant = Tenant.from_db(
        "default",
        ["id", "slug", "name", "status", "suspended_reason", "created_at", "updated_at"],
        [tid, tslug, name, status, reason, created, updated],
    )
    membership = None
    if m_id is not None:
        membership = Membership.from_db(
            "default",
            ["id", "tenant_id", "user_id", "role", "created_at", "updated_at"],
            [m_id, tid, user_id, m_role, m_created, m_updated],
        )
    return tenant, membership


def membership_list(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.filter(tenant=tenant).select_related("user")


def invitation_list(*, tenant: Tenant) -> QuerySet[Invitation]:
    return Invitation.objects.filter(tenant=tenant)
