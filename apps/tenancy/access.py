"""Access helpers: the only way an API fetches one tenant object. Missing and foreign objects
raise the same AccessDenied (404), so existence never leaks."""

from __future__ import annotations

from apps.common.errors import AccessDenied
from apps.tenancy.models import Invitation, Membership, Tenant


def access_membership(*, tenant: Tenant, membership_id: int) -> Membership:
    m = Membership.objects.filter(pk=membership_id).select_related("user").first()
    if m is None:
        raise AccessDenied(
            reason="not_found", tenant_id=tenant.pk, target_type="tenancy.membership", target_id=membership_id
        )
    return m


def access_invitation(*, tenant: Tenant, invitation_id: int) -> Invitation:
    inv = Invitation.objects.filter(pk=invitation_id).first()
    if inv is None:
        raise AccessDenied(
            reason="not_found", tenant_id=tenant.pk, target_type="tenancy.invitation", target_id=invitation_id
        )
    return inv
