"""Federations: one model trained across several tenants' datasets in rounds.

Who owns which row (``tenant``), and who else may see it (RLS, ``apps.tenancy.rls``):

* :class:`Federation` belongs to the **coordinator**; a tenant with a site in it sees it too.
* :class:`FederationSite` belongs to the **dataset owner** (it approves, revokes, allows metrics);
  ``coordinator`` names the federation's tenant, which sees and creates the site rows (for
  datasets it holds a live grant on).
* :class:`Round`, :class:`SiteRound` and :class:`FederationEvent` belong to the coordinator (the
  platform's tasks write them in its scope); a site owner sees the rounds and its own site's slots.

All round state is here, in PostgreSQL: there is no long-lived coordinator process. Tasks claim a
slot with a lease, write once per (round, site), and ``advance`` closes a round under a row lock.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.tenancy.models import TenantOwned


class Federation(TenantOwned):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft (waiting for approvals)"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    name = models.CharField(max_length=200)
    spec = models.JSONField()
    spec_hash = models.CharField(max_length=64)
    # The approvals needed to start (k); at least the spec's min_participants.
    min_sites = models.PositiveSmallIntegerField(default=2)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    status_reason = models.CharField(max_length=300, blank=True, default="")
    cancel_requested = models.BooleanField(default=False)
    # 0 = round 0 (schema statistics); 1..rounds: training; rounds+1: the final evaluation.
    current_round = models.PositiveIntegerField(default=0)
    # Per-federation secret of the per-(site, round) training seeds: never leaves the server.
    seed_secret = models.CharField(max_length=64, blank=True, default="")
    # Global encoders merged from round 0 (what the model's inputs mean); the statistics they were
    # merged from are not kept here and never shown.
    encoders = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.JSONField(default=dict, blank=True)
    event_seq = models.PositiveIntegerField(default=0)
    model_version = models.ForeignKey(
        "training.ModelVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantOwned.Meta):
        ordering = ["-id"]
        indexes = [models.Index(fields=["status"], name="federation_status")]

    def __str__(self) -> str:
        return f"federation {self.pk} ({self.status})"


class FederationSite(TenantOwned):
    """One dataset's place in a federation, owned by the dataset's owner."""

    class Role(models.TextChoices):
        TRAIN = "train", "Trains and evaluates"
        EVALUATE = "evaluate", "Evaluates only"
        # The coordinator's own held-out set (``evaluation.central``): every round's global model is
        # scored on all its rows; reported apart, seen by the coordinator only.
        CENTRAL = "central", "Central evaluation set (the coordinator's)"

    class Approval(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        REVOKED = "revoked", "Revoked"

    federation = models.ForeignKey(Federation, on_delete=models.CASCADE, related_name="sites")
    coordinator = models.ForeignKey("tenancy.Tenant", on_delete=models.PROTECT, related_name="+")
    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.PROTECT, related_name="+")
    # Pinned at start: the de-identified version every round of this site reads.
    version = models.ForeignKey("datasets.DatasetVersion", on_delete=models.PROTECT, null=True, related_name="+")
    # The pinned version's content hash, recorded at start for the final model's lineage (the
    # coordinator may no longer see the version once the grant ends).
    version_sha256 = models.CharField(max_length=64, blank=True, default="")
    label = models.CharField(max_length=50)  # "site-1": how the other participants see this site
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.TRAIN)
    approval = models.CharField(max_length=16, choices=Approval.choices, default=Approval.PENDING)
    approved_digest = models.CharField(max_length=64, blank=True, default="")
    approval_expires_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.CharField(max_length=500, blank=True, default="")
    # The owner lets the coordinator see this site's metrics and example counts.
    share_metrics = models.BooleanField(default=False)
    # active: takes part; dropped: grant or approval withdrawn (from the next round on).
    active = models.BooleanField(default=True)
    dropped_reason = models.CharField(max_length=200, blank=True, default="")
    last_selected_round = models.PositiveIntegerField(null=True, blank=True)
    reservation = models.ForeignKey(
        "datasets.BudgetReservation", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantOwned.Meta):
        ordering = ["federation_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["federation", "dataset"], name="federation_site_dataset_once"),
            models.UniqueConstraint(fields=["federation", "label"], name="federation_site_label_once"),
        ]

    def __str__(self) -> str:
        return f"{self.label} of federation {self.federation_id}"


class Round(TenantOwned):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed (aggregated)"
        FAILED = "failed", "Failed"

    federation = models.ForeignKey(Federation, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, default="train")  # "statistics" | "train" | "evaluate"
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    seed = models.BigIntegerField(default=0)  # the selection draw's seed (recorded)
    selected = models.JSONField(default=list)  # site ids, in participant order
    participants = models.JSONField(default=list)  # site ids whose updates were aggregated
    deadline = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    # The global model this round starts from (its digest) and the one it produced.
    base_digest = models.CharField(max_length=64, blank=True, default="")
    model_digest = models.CharField(max_length=64, blank=True, default="")
    model_storage_name = models.CharField(max_length=300, blank=True, default="")
    model_key = models.ForeignKey("vault.DataKey", on_delete=models.PROTECT, null=True, related_name="+")
    # The strategy's state after this round (FedOpt moments), so a round re-aggregates identically.
    strategy_storage_name = models.CharField(max_length=300, blank=True, default="")
    strategy_key = models.ForeignKey("vault.DataKey", on_delete=models.PROTECT, null=True, related_name="+")
    # Example-weighted metrics of the base model over the sites' validation splits.
    metrics = models.JSONField(default=dict, blank=True)
    # The base model's metrics on the coordinator's central set (``evaluation.central``), apart.
    central_metrics = models.JSONField(default=dict, blank=True)
    epsilon = models.FloatField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)

    class Meta(TenantOwned.Meta):
        ordering = ["federation_id", "number"]
        constraints = [models.UniqueConstraint(fields=["federation", "number"], name="round_once")]


class SiteRound(TenantOwned):
    """One site's slot in one round: claimed with a lease, its update stored exactly once."""

    class State(models.TextChoices):
        SELECTED = "selected", "Selected"
        TRAINING = "training", "Training"
        SUBMITTED = "submitted", "Submitted"
        REJECTED = "rejected", "Rejected"
        TIMED_OUT = "timed_out", "Timed out"
        FAILED = "failed", "Failed"
        EXCLUDED = "excluded", "Excluded"

    DONE = (State.SUBMITTED, State.REJECTED, State.TIMED_OUT, State.FAILED, State.EXCLUDED)

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="slots")
    site = models.ForeignKey(FederationSite, on_delete=models.CASCADE, related_name="slots")
    state = models.CharField(max_length=16, choices=State.choices, default=State.SELECTED)
    reason = models.CharField(max_length=300, blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_owner = models.CharField(max_length=100, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # Admission (apps.federation.services.admission): ``fl`` is the platform's pool, admitted by
    # the scheduler under the coordinator's quota; ``fl.<owner slug>`` an owner's own worker,
    # admitted at once. A slot waits selected, with a reason, until admitted; only then is its
    # task sent.
    queue = models.CharField(max_length=120, default="fl")
    admitted_at = models.DateTimeField(null=True, blank=True)
    wait_reason = models.CharField(max_length=300, blank=True, default="")
    n_examples = models.PositiveIntegerField(null=True, blank=True)
    n_eval = models.PositiveIntegerField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    update_norm = models.FloatField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    epsilon = models.FloatField(null=True, blank=True)
    # Metrics of the round's base model on this site's validation split, and local training's.
    eval_metrics = models.JSONField(default=dict, blank=True)
    train_metrics = models.JSONField(default=dict, blank=True)
    # Round 0: the site's schema summary and statistics (merged server-side, never shown).
    statistics = models.JSONField(default=dict, blank=True)
    update_storage_name = models.CharField(max_length=300, blank=True, default="")
    update_key = models.ForeignKey("vault.DataKey", on_delete=models.PROTECT, null=True, related_name="+")
    update_digest = models.CharField(max_length=64, blank=True, default="")
    nonce = models.CharField(max_length=64, blank=True, default="")
    error = models.JSONField(default=dict, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta(TenantOwned.Meta):
        ordering = ["round_id", "site_id"]
        constraints = [models.UniqueConstraint(fields=["round", "site"], name="site_round_once")]


class FederationEvent(TenantOwned):
    """The federation's stream: ``seq`` increases per federation without gaps (replay from any)."""

    federation = models.ForeignKey(Federation, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=32)  # "state" | "round" | "site" | "metrics"
    round_number = models.PositiveIntegerField(null=True, blank=True)
    site = models.ForeignKey(FederationSite, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantOwned.Meta):
        ordering = ["federation_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["federation", "seq"], name="federation_event_seq_once")]


class PreparedCache(TenantOwned):
    """A site's prepared tensors (its pinned version encoded with the federation's encoders), kept
    sealed under a key derived from the owner's version key so that any ``fl`` worker's next task at the site
    skips the decryption, the Parquet decode and the encoding (``services.prepared_store``).

    Bookkeeping of the platform's own artefact, in the coordinator's scope: never shown, never
    audited row by row (the site task that read the version is); removed, with its object, when the
    site is dropped and when the federation ends."""

    federation = models.ForeignKey(Federation, on_delete=models.CASCADE, related_name="+")
    site = models.ForeignKey(FederationSite, on_delete=models.CASCADE, related_name="+")
    inputs_digest = models.CharField(max_length=64)  # version, encoders and training spec
    storage_name = models.CharField(max_length=300)
    # The owner's key the entry's own key is derived from (HKDF with ``salt``): the pinned
    # version's data key, so a crypto-shred of the owner leaves the entry unreadable.
    key = models.ForeignKey("vault.DataKey", on_delete=models.PROTECT, related_name="+")
    salt = models.CharField(max_length=64, blank=True, default="")  # hex; "" = sealed before derivation
    sha256 = models.CharField(max_length=64)  # of the safetensors bytes
    plaintext_bytes = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta(TenantOwned.Meta):
        ordering = ["federation_id", "site_id"]
        constraints = [models.UniqueConstraint(fields=["site", "inputs_digest"], name="prepared_cache_once")]
