"""The unaudited twins of real code paths, used only as baselines by the benchmarks."""

from __future__ import annotations

from django.db import transaction

from apps.common.errors import Conflict
from apps.tenancy.models import Membership, Role, Tenant
from apps.tenancy.scope import set_db_context


def membership_change_role_unaudited(*, tenant: Tenant, membership: Membership, role: str) -> Membership:
    """``apps.tenancy.services.membership_change_role`` minus the audit: same lock, checks and
    update, but no ``audited_change`` bookkeeping and no ``audit_record``. The row-capture trigger
    is muted with the audit-context GUC, so no event at all is written."""
    with transaction.atomic():
        set_db_context(audit_context="bench.unaudited")
        m = Membership.objects.select_for_update().get(pk=membership.pk)
        if (
            m.role == Role.OWNER
            and role != Role.OWNER
            and Membership.objects.filter(tenant=tenant, role=Role.OWNER).count() <= 1
        ):
            raise Conflict("A tenant must keep at least one owner.", code="last_owner")
        m.role = role
        m.save(update_fields=["role", "updated_at"])
    return m
