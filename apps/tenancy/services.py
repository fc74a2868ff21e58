"""Writes for tenants, memberships and invitations. Each mutates and audits in one transaction."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.common.context import Actor
from apps.common.exceptions import Conflict, Invalid, NotFound, PermissionDenied
from apps.tenancy.models import Invitation, Membership, Role, Tenant
from apps.tenancy.scope import lookup_scope, tenant_scope


def tenant_create(*, slug: str, name: str, owner: Any = None, actor: Actor | None = None) -> Tenant:
    """Create a tenant (platform action) and, optionally, its first owner."""
    # Tenants are not tenant-owned rows (no RLS): the app role creates them; memberships need scope.
    with audited_change():
        tenant = Tenant.objects.create(slug=slug, name=name)
        audit_record(action="tenant.created", tenant=tenant, actor=actor, target=tenant, details={"slug": slug})
        if owner is not None:
            with tenant_scope(tenant.pk):
                m = Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
                audit_record(
                    action="member.added",
                    tenant=tenant,
                    actor=actor,
                    target=m,
                    details={"user_id": owner.pk, "role": Role.OWNER},
                )  # type: ignore[attr-defined]
    return tenant


def tenant_update(*, tenant: Tenant, name: str) -> Tenant:
    with audited_change():
        old = tenant.name
        tenant.name = name
        tenant.save(update_fields=["name", "updated_at"])
        audit_record(action="tenant.updated", tenant=tenant, target=tenant, details={"name_from": old, "name_to": name})
    return tenant


def tenant_set_status(*, tenant: Tenant, status: str, reason: str, actor: Actor | None = None) -> Tenant:
    """Suspend or reactivate a tenant. Suspension blocks its API keys, sessions and websockets."""
    if status not in Tenant.Status.values:
        raise Invalid(f"Must be one of {Tenant.Status.values}.", field="status")
    with audited_change():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        tenant.status = status
        tenant.suspended_reason = reason if status == Tenant.Status.SUSPENDED else ""
        tenant.save(update_fields=["status", "suspended_reason", "updated_at"])
        audit_record(
            action=f"tenant.{'suspended' if status == 'suspended' else 'reactivated'}",
            tenant=tenant,
            actor=actor,
            target=tenant,
            details={"reason": reason[:500]},
        )
        if status == Tenant.Status.SUSPENDED:
            tid = tenant.pk
            transaction.on_commit(lambda: _close_live_connections(tid, "tenant_suspended"))
    return tenant


def _close_live_connections(tenant_id: int, reason: str, user_id: int | None = None) -> None:
    from apps.audit.live import publish_tenant_control

    publish_tenant_control(tenant_id, {"action": "close", "reason": reason, "user_id": user_id})


def _owner_count(tenant: Tenant) -> int:
    return Membership.objects.filter(tenant=tenant, role=Role.OWNER).count()


def _check_role_change_allowed(*, actor_role: str, old_role: str | None, new_role: str | None) -> None:
    if actor_role != Role.OWNER and Role.OWNER in (old_role, new_role):
        raise PermissionDenied("Only an owner can grant, change or remove the owner role.", code="owner_required")


def membership_add(*, tenant: Tenant, actor_role: str, user: Any, role: str) -> Membership:
    _check_role_change_allowed(actor_role=actor_role, old_role=None, new_role=role)
    try:
        with audited_change():
            m = Membership.objects.create(tenant=tenant, user=user, role=role)
            audit_record(action="member.added", tenant=tenant, target=m, details={"user_id": user.pk, "role": role})  # type: ignore[attr-defined]
    except IntegrityError as exc:
        raise Conflict("That user is already a member.", code="already_member") from exc
    return m


def membership_change_role(*, tenant: Tenant, actor_role: str, membership: Membership, role: str) -> Membership:
    _check_role_change_allowed(actor_role=actor_role, old_role=membership.role, new_role=role)
    with audited_change():
        m = Membership.objects.select_for_update().get(pk=membership.pk)
        old = m.role
        if old == Role.OWNER and role != Role.OWNER and _owner_count(tenant) <= 1:
            raise Conflict("A tenant must keep at least one owner.", code="last_owner")
        m.role = role
        m.save(update_fields=["role", "updated_at"])
        audit_record(
            action="member.role_changed",
            tenant=tenant,
            target=m,
            details={"user_id": m.user_id, "from": old, "to": role},
        )
    return m


def membership_remove(*, tenant: Tenant, actor_role: str, membership: Membership) -> None:
    _check_role_change_allowed(actor_role=actor_role, old_role=membership.role, new_role=None)
    with audited_change():
        m = Membership.objects.select_for_update().get(pk=membership.pk)
        if m.role == Role.OWNER and _owner_count(tenant) <= 1:
            raise Conflict("A tenant must keep at least one owner.", code="last_owner")
        user_id, role, pk = m.user_id, m.role, m.pk
        m.delete()
        audit_record(
            action="member.removed",
            tenant=tenant,
            target_type="tenancy.membership",
            target_id=pk,
            details={"user_id": user_id, "role": role},
        )
        tid = tenant.pk
        transaction.on_commit(lambda: _close_live_connections(tid, "membership_removed", user_id))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invitation_create(
    *, tenant: Tenant, actor_role: str, invited_by: Any, email: str, role: str, ttl_days: int = 7
) -> tuple[Invitation, str]:
    """Create an invitation; returns it and the one-time token (never stored in clear)."""
    _check_role_change_allowed(actor_role=actor_role, old_role=None, new_role=role)
    token = "inv_" + secrets.token_urlsafe(32)
    with audited_change():
        inv = Invitation.objects.create(
            tenant=tenant,
            email=email.lower(),
            role=role,
            token_hash=_token_hash(token),
            invited_by=invited_by,
            expires_at=timezone.now() + timedelta(days=ttl_days),
        )
        audit_record(
            action="invitation.created",
            tenant=tenant,
            target=inv,
            details={"email_domain": email.split("@")[-1].lower(), "role": role},
        )
    return inv, token


def invitation_revoke(*, tenant: Tenant, invitation: Invitation) -> Invitation:
    with audited_change():
        inv = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if inv.status != "pending":
            raise Conflict(f"The invitation is {inv.status}.", code="invitation_not_pending")
        inv.revoked_at = timezone.now()
        inv.save(update_fields=["revoked_at"])
        audit_record(action="invitation.revoked", tenant=tenant, target=inv)
    return inv


def invitation_accept(*, user: Any, token: str) -> Membership:
    """Accept an invitation addressed to ``user``'s e-mail. Unknown, used, revoked, expired or
    someone else's tokens all answer the same way (404)."""
    with lookup_scope(_token_hash(token)):
        inv = Invitation.all_tenants.filter(token_hash=_token_hash(token)).first()
    email = getattr(user, "email", "").lower()
    if inv is None or inv.status != "pending" or inv.email != email:
        raise NotFound(
            reason="invitation_invalid", tenant_id=inv.tenant_id if inv else None, action="invitation.accept"
        )
    with tenant_scope(inv.tenant_id, user_id=user.pk), audited_change():  # type: ignore[attr-defined]
        inv = Invitation.objects.select_for_update().get(pk=inv.pk)
        if inv.status != "pending":
            raise NotFound(reason="invitation_invalid", tenant_id=inv.tenant_id, action="invitation.accept")
        inv.accepted_at = timezone.now()
        inv.save(update_fields=["accepted_at"])
        try:
            with transaction.atomic():
                m = Membership.objects.create(tenant_id=inv.tenant_id, user=user, role=inv.role)
        except IntegrityError as exc:
            raise Conflict("You are already a member of this tenant.", code="already_member") from exc
        audit_record(
            action="invitation.accepted",
            tenant=inv.tenant_id,
            target=m,
            details={"invitation_id": inv.pk, "role": inv.role},
        )
    return m
