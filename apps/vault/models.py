"""Per-tenant data keys (DEKs). The database holds only a KEK-wrapped key share; the usable key is
derived from it with the tenant's shred secret, which lives outside the database
(``apps.vault.keystore``).

Encryptions under each key are counted by a PostgreSQL sequence per key (``nextval`` is never
rolled back, so the count is an upper bound even when the surrounding transaction fails)."""

from __future__ import annotations

from django.db import models

from apps.tenancy.models import TenantOwned


class DataKey(TenantOwned):
    class Purpose(models.TextChoices):
        DATA = "data", "Data encryption (AES-256-GCM)"
        PSEUDONYM = "pseudonym", "Pseudonymisation (HMAC-SHA-256)"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired (decrypts, never encrypts)"
        DESTROYED = "destroyed", "Destroyed (crypto-shredded)"

    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    kek_id = models.CharField(max_length=100, blank=True, default="")
    wrapped = models.BinaryField(null=True, editable=False)
    max_encryptions = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    rewrapped_at = models.DateTimeField(null=True, blank=True)
    destroyed_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantOwned.Meta):
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "purpose"],
                condition=models.Q(status="active"),
                name="datakey_one_active_per_purpose",
            )
        ]

    def __str__(self) -> str:
        return f"dek {self.pk} ({self.purpose}, {self.status})"

    @property
    def sequence_name(self) -> str:
        return f"cohort_dek_{self.pk}"
