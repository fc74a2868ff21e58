"""Access helpers: the only way an API fetches one tenant object. Missing and foreign objects
raise the same 404, so existence never leaks."""

from __future__ import annotations

from apps.common.access import get_or_deny
from apps.tenancy.models import Invitation, Membership, Tenant


def access_membership(*, tenant: Tenant, membership_id: int) -> Membership:
    return get_or_deny(Membership.objects.select_related("user"), membership_id, tenant=tenant)


def access_invitation(*, tenant: Tenant, invitation_id: int) -> Invitation:
    return get_or_deny(Invitation.objects.all(), invitation_id, tenant=tenant)
