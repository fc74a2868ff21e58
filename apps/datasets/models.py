"""Datasets, their immutable versions, upload sessions, grants between tenants, quotas and the
privacy-budget ledger."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models

from apps.tenancy.models import Tenant, TenantOwned


class Dataset(TenantOwned):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DELETED = "deleted", "Deleted (purged after the retention period)"
        PURGED = "purged", "Purged"

    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="", max_length=5000)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    purge_after = models.DateTimeField(null=True, blank=True)

    class Meta(TenantOwned.Meta):
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "name"], condition=models.Q(status="active"), name="dataset_unique_active_name"
            )
        ]

    def __str__(self) -> str:
        return self.name


class DatasetVersion(TenantOwned):
    """One immutable version. ``raw`` versions hold the upload as validated; ``deidentified``
    versions are derived from a raw one by a column policy and are all that training sees."""

    class Kind(models.TextChoices):
        RAW = "raw", "Raw (owner/admin only)"
        DEIDENTIFIED = "deidentified", "De-identified"

    class Status(models.TextChoices):
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        PURGED = "purged", "Purged"

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PROCESSING)
    source_version = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    format = models.CharField(max_length=16, blank=True, default="")
    original_filename = models.CharField(max_length=255, blank=True, default="")
    upload_sha256 = models.CharField(max_length=64, blank=True, default="")
    content_sha256 = models.CharField(max_length=64, blank=True, default="")
    schema = models.JSONField(default=dict)
    validation = models.JSONField(default=dict)
    pii_report = models.JSONField(default=dict)
    policy = models.JSONField(default=dict)
    deid_report = models.JSONField(default=dict)
    options = models.JSONField(default=dict)
    rows = models.BigIntegerField(default=0)
    upload_bytes = models.BigIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    stored_bytes = models.BigIntegerField(default=0)
    storage_name = models.CharField(max_length=300, blank=True, default="")
    data_key = models.ForeignKey("vault.DataKey", on_delete=models.PROTECT, null=True, related_name="+")
    error = models.JSONField(default=dict)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantOwned.Meta):
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["dataset", "number"], name="version_unique_number")]

    def __str__(self) -> str:
        return f"{self.dataset_id} v{self.number} ({self.kind})"


class UploadSession(TenantOwned):
    """A resumable chunked upload: parts arrive (encrypted at once) at byte offsets; complete
    checks contiguity and the SHA-256 of the whole file, then creates a version."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETED = "completed", "Completed"
        ABORTED = "aborted", "Aborted"
        EXPIRED = "expired", "Expired"

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="+")
    filename = models.CharField(max_length=255)
    size = models.BigIntegerField()
    options = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    version = models.ForeignKey(DatasetVersion, on_delete=models.SET_NULL, null=True, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta(TenantOwned.Meta):
        ordering = ["-id"]


class UploadPart(TenantOwned):
    session = models.ForeignKey(UploadSession, on_delete=models.CASCADE, related_name="parts")
    offset = models.BigIntegerField()
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64, help_text="Object id bound into the encryption AAD")
    storage_name = models.CharField(max_length=300)
    data_key = models.ForeignKey("vault.DataKey", on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantOwned.Meta):
        ordering = ["offset"]
        constraints = [models.UniqueConstraint(fields=["session", "offset"], name="uploadpart_unique_offset")]


class DatasetGrant(TenantOwned):
    """The owner (``tenant``) lets ``grantee`` process (train on the de-identified version, never
    read rows), download a dataset, or only federate it (use it as a site of the grantee's
    federations, each approved by the owner; ``process`` and ``download`` imply it). Revocation
    takes effect at once."""

    class Permission(models.TextChoices):
        PROCESS = "process", "Process (train; never read rows)"
        DOWNLOAD = "download", "Download (read the de-identified version)"
        FEDERATE = "federate", "Federate (a federation participant only: no jobs, no per-site model)"

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="grants")
    grantee = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    permission = models.CharField(max_length=16, choices=Permission.choices)
    note = models.CharField(max_length=500, blank=True, default="")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The share of the dataset's privacy budget the owner gives this grantee (summed over all of the
    # grantee's reservations on the dataset); null: none, so no DP use by this grantee.
    epsilon_allotment = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    delta_allotment = models.DecimalField(max_digits=14, decimal_places=12, null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantOwned.Meta):
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["dataset", "grantee", "permission"],
                condition=models.Q(revoked_at__isnull=True),
                name="grant_unique_live",
            )
        ]

    def is_live(self, now: object = None) -> bool:
        from django.utils import timezone

        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)  # type: ignore[operator]

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.is_live() else "expired"


class DatasetEvent(TenantOwned):
    """The dataset's live stream for its owner (``tenants/<slug>/datasets/<id>`` on the websocket):
    versions uploaded, processed, de-identified or failed, and grants given or revoked. ``seq``
    increases per dataset without gaps, so a client resumes after any number
    (``services.events``). A summary only: the reports themselves are read over REST."""

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="events")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=32)  # "version" | "grant"
    version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantOwned.Meta):
        ordering = ["dataset_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["dataset", "seq"], name="dataset_event_seq_once")]


class DatasetQuota(TenantOwned):
    """Per-tenant overrides of the dataset quotas (defaults come from settings)."""

    max_bytes = models.BigIntegerField(null=True, blank=True)
    max_datasets = models.PositiveIntegerField(null=True, blank=True)

    class Meta(TenantOwned.Meta):
        constraints = [models.UniqueConstraint(fields=["tenant"], name="quota_one_per_tenant")]


class PrivacyBudget(TenantOwned):
    """A dataset's (ε, δ) budget under basic sequential composition (see docs/privacy-budget.md).
    Spent and reserved amounts are sums over the reservations, never stored twice."""

    dataset = models.OneToOneField(Dataset, on_delete=models.PROTECT, related_name="budget")
    epsilon_total = models.DecimalField(max_digits=12, decimal_places=6)
    delta_total = models.DecimalField(max_digits=14, decimal_places=12)
    updated_at = models.DateTimeField(auto_now=True)


class BudgetReservation(TenantOwned):
    """A reservation against a dataset's budget, by the owner or a ``process`` grantee
    (``consumer``). Reserved before a DP use starts; committed (with the actual spend, at most the
    reservation) or released after."""

    class State(models.TextChoices):
        RESERVED = "reserved", "Reserved"
        COMMITTED = "committed", "Committed"
        RELEASED = "released", "Released"

    budget = models.ForeignKey(PrivacyBudget, on_delete=models.PROTECT, related_name="reservations")
    consumer = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.RESERVED)
    epsilon = models.DecimalField(max_digits=12, decimal_places=6)
    delta = models.DecimalField(max_digits=14, decimal_places=12)
    epsilon_spent = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    delta_spent = models.DecimalField(max_digits=14, decimal_places=12, default=Decimal(0))
    purpose = models.CharField(max_length=200)
    reference = models.CharField(max_length=100, blank=True, default="")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantOwned.Meta):
        ordering = ["-id"]
