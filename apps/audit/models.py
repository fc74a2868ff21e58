"""Audit events (append-only, hash-chained), chain heads and signed checkpoints."""

from __future__ import annotations

import json
from typing import Any

from django.db import models

from apps.tenancy.models import Tenant, TenantOwned

# The fields of an event as shown to people (API, exports, console), in display order.
EVENT_FIELDS: tuple[str, ...] = (
    "id",
    "chain",
    "seq",
    "created_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "target_type",
    "target_id",
    "outcome",
    "request_id",
    "source_ip",
    "user_agent",
    "details",
    "prev_hash",
    "hash",
)


class AuditEvent(TenantOwned):
    """One audited action. Rows are written only by the SQL function ``cohort_audit_append``.

    ``tenant`` is NULL for platform events (logins, console actions); each tenant has its own
    chain (``chain = 't<id>'``) and the platform has one (``chain = 'platform'``).
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        DENIED = "denied", "Denied"
        ERROR = "error", "Error"

    class ActorType(models.TextChoices):
        USER = "user", "User"
        API_KEY = "api_key", "API key"
        SYSTEM = "system", "System"
        SITE = "site", "Site"
        ANONYMOUS = "anonymous", "Anonymous"
        DATABASE = "database", "Database (row trigger)"

    # Platform events have no tenant, hence nullable here.
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, null=True, blank=True, related_name="+")  # type: ignore[assignment]
    chain = models.CharField(max_length=32)
    seq = models.BigIntegerField()
    created_at = models.DateTimeField()
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True, null=True)
    actor_label = models.CharField(max_length=255, blank=True, null=True)
    action = models.CharField(max_length=100)
    target_type = models.CharField(max_length=100, blank=True, null=True)
    target_id = models.CharField(max_length=100, blank=True, null=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    request_id = models.CharField(max_length=64, blank=True, null=True)
    source_ip = models.CharField(max_length=64, blank=True, null=True)
    user_agent = models.CharField(max_length=512, blank=True, null=True)
    details = models.TextField(default="{}")  # canonical JSON text, exactly as hashed
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta(TenantOwned.Meta):
        ordering = ["chain", "seq"]
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="audit_chain_seq_unique")]
        indexes = [
            models.Index(fields=["tenant", "created_at"], name="audit_tenant_time"),
            models.Index(fields=["action"], name="audit_action"),
            models.Index(fields=["created_at"], name="audit_time"),
        ]

    def __str__(self) -> str:
        return f"{self.chain}#{self.seq} {self.action} {self.outcome}"

    @property
    def details_dict(self) -> dict[str, Any]:
        try:
            value = json.loads(self.details)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {"value": value}


class ChainHead(models.Model):
    """The last sequence number and hash of each chain; row-locked by every append."""

    chain = models.CharField(max_length=32, unique=True)
    seq = models.BigIntegerField(default=0)
    head_hash = models.CharField(max_length=64)

    def __str__(self) -> str:
        return f"{self.chain}@{self.seq}"


class AuditCheckpoint(models.Model):
    """A signed statement of every chain's head at a moment, kept in the DB and exported."""

    created_at = models.DateTimeField(auto_now_add=True)
    payload = models.TextField()  # canonical JSON: {"chains": {chain: [seq, hash]}, "created_at": ...}
    signature = models.CharField(max_length=200)
    key_id = models.CharField(max_length=64)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"checkpoint {self.pk} ({self.created_at:%Y-%m-%d %H:%M})"
