"""Training jobs, their event stream (metrics, logs, state changes with sequence numbers) and the
model registry. The engine (``workers.training``) never sees these: the task adapts them."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.tenancy.models import TenantOwned


class TrainingJob(TenantOwned):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    class Kind(models.TextChoices):
        TRAIN = "train", "Training"
        SIMULATE = "simulate", "Federation simulation"

    name = models.CharField(max_length=200)
    # "simulate": a federation spec run over seeded virtual sites of the tenant's own version
    # (workers.federated.simulate); ``spec`` is then its embedded TrainSpec, ``simulation`` the rest.
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.TRAIN)
    simulation = models.JSONField(default=dict, blank=True)
    # DP-SGD (spec.privacy): the dataset ledger's reservation, settled when the job ends.
    budget_reservation = models.ForeignKey(
        "datasets.BudgetReservation", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    # May belong to another tenant (a dataset granted with ``process``): checked at every start.
    dataset_version = models.ForeignKey("datasets.DatasetVersion", on_delete=models.PROTECT, related_name="+")
    spec = models.JSONField()
    spec_hash = models.CharField(max_length=64)
    queue = models.CharField(max_length=16, default="cpu")
    priority = models.SmallIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    status_reason = models.CharField(max_length=300, blank=True, default="")
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    max_restarts = models.PositiveSmallIntegerField(default=5)
    lease_owner = models.CharField(max_length=100, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    checkpoint_key = models.ForeignKey("vault.DataKey", on_delete=models.PROTECT, null=True, related_name="+")
    progress = models.JSONField(default=dict)
    result = models.JSONField(default=dict)
    error = models.JSONField(default=dict)
    event_seq = models.PositiveIntegerField(default=0)
    # Scheduling (apps.training.scheduler): a queued job waits, with ``wait_reason``, until the
    # platform admits it (capacity, the tenant's quotas, fair share); only then is a task enqueued.
    slots = models.PositiveSmallIntegerField(default=1)
    nodes = models.PositiveSmallIntegerField(default=1)  # one worker task per node (multi-node DDP)
    # Multi-node runs: where node 0 of the current attempt hosts the c10d store, published by that
    # node's task for the other nodes' tasks ({"addr", "port", "attempt"}).
    rendezvous = models.JSONField(default=dict, blank=True)
    admitted_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    enqueues = models.PositiveSmallIntegerField(default=0)
    wait_reason = models.CharField(max_length=300, blank=True, default="")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantOwned.Meta):
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "queue", "priority"], name="job_admission"),
            models.Index(fields=["tenant", "admitted_at"], name="job_last_admitted"),
        ]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.status})"


class JobEvent(TenantOwned):
    """One entry of a job's stream: ``metrics`` (throttled), ``log`` lines, ``state`` changes.
    ``seq`` increases per job without gaps, so a client can replay from any sequence number."""

    class Kind(models.TextChoices):
        METRICS = "metrics", "Metrics"
        LOG = "log", "Log line"
        STATE = "state", "State change"

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    step = models.PositiveIntegerField(default=0)
    epoch = models.PositiveIntegerField(default=0)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantOwned.Meta):
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="jobevent_unique_seq")]


class ModelVersion(TenantOwned):
    """Trained weights (safetensors, encrypted like datasets), with spec, metrics and lineage."""

    name = models.CharField(max_length=200)
    version = models.PositiveIntegerField()
    # What produced it: a training job, or (job is null) a federation, whose final or best round's
    # model this is (``Federation.model_version`` points back; ``lineage`` names every dataset).
    job = models.OneToOneField(
        TrainingJob, on_delete=models.PROTECT, null=True, blank=True, related_name="model_version"
    )
    source = models.CharField(max_length=16, default="job")  # "job" | "federation"
    # The object id its weights are encrypted under (AAD): "job<id>" or "federation<id>".
    storage_subject = models.CharField(max_length=64, blank=True, default="")
    spec = models.JSONField()
    metrics = models.JSONField(default=dict)
    lineage = models.JSONField(default=dict)
    encoders = models.JSONField(default=dict)
    # What rebuilds the architecture for serving: kind, problem, n_features / vocab / image size.
    input_info = models.JSONField(default=dict)
    storage_name = models.CharField(max_length=300)
    data_key = models.ForeignKey("vault.DataKey", on_delete=models.PROTECT, related_name="+")
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantOwned.Meta):
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name", "version"], name="model_unique_version"),
            models.CheckConstraint(
                condition=models.Q(source="job", job__isnull=False) | models.Q(source="federation", job__isnull=True),
                name="model_source_matches_job",
            ),
        ]


class TrainingQuota(TenantOwned):
    """Per-tenant overrides of the training quotas (None: the default from settings). Changed only
    through ``apps.training.scheduler.quota_set`` (audited, before and after)."""

    max_concurrent_jobs = models.PositiveIntegerField(null=True, blank=True)
    max_cpu_jobs = models.PositiveIntegerField(null=True, blank=True)
    gpu_hours_per_month = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    # Federation site tasks on the platform's pool running at once for this tenant as coordinator.
    max_site_tasks = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta(TenantOwned.Meta):
        constraints = [models.UniqueConstraint(fields=["tenant"], name="training_quota_one_per_tenant")]


class ResourceUsage(TenantOwned):
    """Worker time used per tenant, month and pool (``cpu`` / ``gpu``), in slot-seconds: added by
    running jobs at each lease renewal and when they finish, so a killed worker's time counts too."""

    month = models.DateField()
    resource = models.CharField(max_length=8)
    seconds = models.FloatField(default=0.0)

    class Meta(TenantOwned.Meta):
        constraints = [
            models.UniqueConstraint(fields=["tenant", "month", "resource"], name="usage_one_per_month_resource")
        ]
