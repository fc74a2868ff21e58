"""Tenants, memberships, invitations, and the TenantOwned base with its fail-closed manager."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from apps.tenancy.scope import TenantScopeMissing, current_tenant_id


class Tenant(models.Model):
    """An organisation (hospital, bank, lab)."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    suspended_reason = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class TenantScopedManager(models.Manager):
    """Filters by the tenant in scope and raises when there is none (fail closed)."""

    def get_queryset(self) -> models.QuerySet[Any]:
        tenant_id = current_tenant_id()
        if tenant_id is None:
            raise TenantScopeMissing(self.model.__name__)
        return super().get_queryset().filter(tenant_id=tenant_id)


class TenantOwned(models.Model):
    """Base of every tenant-owned model: a tenant FK, a scoped ``objects``, a loud bypass."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")

    # The bypass: only allow-listed modules may use it (tests/architecture checks that).
    all_tenants = models.Manager()
    objects = TenantScopedManager()

    class Meta:
        abstract = True
        default_manager_name = "all_tenants"
        base_manager_name = "all_tenants"


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    ANALYST = "analyst", "Analyst"
    INTEGRATOR = "integrator", "Integrator"
    AUDITOR = "auditor", "Auditor"


class Membership(TenantOwned):
    """A user's role in one tenant."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta(TenantOwned.Meta):
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_user")]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.tenant_id}:{self.role}"


class Invitation(TenantOwned):
    """An invitation to join a tenant; the token is shown once and stored hashed."""

    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantOwned.Meta):
        ordering = ["id"]

    def __str__(self) -> str:
        return f"invitation {self.pk} ({self.role})"

    @property
    def status(self) -> str:
        from django.utils import timezone

        if self.accepted_at:
            return "accepted"
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"
