"""Federation governance: a coordinator drafts a federation over datasets it may federate; each
dataset's owner approves (or rejects) the exact digest it was shown; the federation starts once k
sites approved, reserving every dataset's privacy budget first; revocation drops a site.

Every step is audited in the coordinator's chain and, where a site is concerned, in the owner's.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.audit.services import audit_record, audit_record_both, audited_change
from apps.common.exceptions import BudgetExceeded, Conflict, Invalid, NotFound, Unprocessable
from apps.datasets import selectors as dataset_selectors
from apps.datasets.models import BudgetReservation, Dataset, DatasetVersion
from apps.federation.models import Federation, FederationSite
from apps.federation.services.events import append_event
from apps.tenancy.models import Tenant
from workers.federated.spec import FederationSpec
from workers.training.spec import SpecError

MAX_SITES = 100
MAX_APPROVAL_DAYS = 365


def _user(actor: Any) -> Any:
    """The acting user for a ``*_by`` column; None for an API key (its id is in the audit trail)."""
    if getattr(actor, "key_id", None) is not None or not getattr(actor, "pk", None):
        return None
    return actor


def parse_spec(raw: Any, n_sites: int | None = None) -> FederationSpec:
    """A validated :class:`FederationSpec`, or :class:`Invalid` with every problem by field path."""
    try:
        spec = FederationSpec.from_dict(raw)
        spec.validate(n_sites=n_sites)
    except SpecError as exc:
        raise Invalid(str(exc), fields={_spec_path(k): v for k, v in exc.fields.items()}) from None
    return spec


def _spec_path(path: str) -> str:
    return f"spec.{path}" if path else "spec"


def _usable_dataset(coordinator: Tenant, dataset_id: Any) -> tuple[Dataset, DatasetVersion]:
    """The coordinator's own dataset or one it holds a live federate (or process/download) grant
    on, with its newest released version; the same 400 for missing and not granted."""
    if not isinstance(dataset_id, int) or isinstance(dataset_id, bool):
        raise Invalid(fields={"sites": [f"dataset_id must be an integer, got {dataset_id!r}."]})
    if not dataset_selectors.dataset_access(consumer=coordinator, dataset_id=dataset_id, permission="federate"):
        raise Invalid(fields={"sites": [f"Dataset {dataset_id}: not found or not granted for federation."]})
    ds = dataset_selectors.dataset_for_federation(dataset_id=dataset_id)
    version = dataset_selectors.latest_deidentified(dataset=ds, shared=True)
    if version is None:
        raise Invalid(fields={"sites": [f"Dataset {dataset_id}: no released (de-identified, ready) version yet."]})
    return ds, version


def schema_differences(fspec: FederationSpec, versions: dict[str, DatasetVersion]) -> dict[str, list[str]]:
    """Round 0's schema check, on the versions' recorded schemas: site label -> differences."""
    from workers.federated.stats import compare_schemas, site_schema_summary
    from workers.schema import DatasetSchema

    summaries = {
        label: site_schema_summary(DatasetSchema.from_dict(v.schema), fspec.train) for label, v in versions.items()
    }
    return compare_schemas(summaries)


def federation_create(
    *,
    tenant: Tenant,
    created_by: Any,
    name: str,
    spec: dict[str, Any],
    sites: list[dict[str, Any]],
    min_sites: int | None = None,
) -> Federation:
    """A draft federation and one pending site per dataset (owned by the dataset's owner)."""
    if not isinstance(sites, list) or not sites:
        raise Invalid(fields={"sites": ["Name at least one dataset."]})
    if len(sites) > MAX_SITES:
        raise Invalid(fields={"sites": [f"At most {MAX_SITES} sites."]})
    trainers = [s for s in sites if (s.get("role") or "train") == "train"]
    fspec = parse_spec(spec, n_sites=len(trainers))
    chosen: list[tuple[Dataset, DatasetVersion, str]] = []
    seen: set[int] = set()
    for s in sites:
        ds, version = _usable_dataset(tenant, s.get("dataset_id"))
        if ds.pk in seen:
            raise Invalid(fields={"sites": [f"Dataset {ds.pk} is named twice."]})
        seen.add(ds.pk)
        role = s.get("role") or FederationSite.Role.TRAIN
        if role not in FederationSite.Role.values:
            raise Invalid(fields={"sites": [f"role must be one of {', '.join(FederationSite.Role.values)}."]})
        if role == FederationSite.Role.CENTRAL and ds.tenant_id != tenant.pk:
            raise Invalid(fields={"sites": [
                f"Dataset {ds.pk}: a central set is a dataset of your own; another tenant's held-out data "
                "takes part as a site with role 'evaluate', with its owner's approval."]})  # fmt: skip
        chosen.append((ds, version, role))
    centrals = [c for c in chosen if c[2] == FederationSite.Role.CENTRAL]
    if fspec.evaluation.central and len(centrals) != 1:
        raise Invalid(fields={"sites": [
            f"evaluation.central needs exactly one site with role 'central' ({len(centrals)} named)."]})  # fmt: skip
    if centrals and not fspec.evaluation.central:
        raise Invalid(fields={"spec.evaluation.central": [
            "A site with role 'central' is named: set evaluation.central to true."]})  # fmt: skip
    labels = {f"site-{i + 1}": v for i, (_ds, v, _r) in enumerate(chosen)}
    diffs = schema_differences(fspec, labels)
    if diffs:
        raise Invalid(
            "The sites' schemas differ.",
            fields={f"sites.{label}": msgs for label, msgs in diffs.items()},
        )
    for i, (_ds, version, _role) in enumerate(chosen):
        problems = _dp_row_problems(fspec, version)
        if problems:
            raise Invalid(fields={f"sites.site-{i + 1}": problems})
    k = min_sites if min_sites is not None else fspec.min_participants
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k > len(trainers):
        raise Invalid(fields={"min_sites": [f"Must be between 1 and the {len(trainers)} training sites."]})
    with audited_change():
        fed = Federation.objects.create(
            tenant=tenant,
            name=name,
            spec=fspec.to_dict(),
            spec_hash=fspec.spec_hash(),
            min_sites=k,
            created_by=_user(created_by),
        )
        created = [
            FederationSite.all_tenants.create(
                tenant_id=ds.tenant_id,
                federation=fed,
                coordinator=tenant,
                dataset=ds,
                label=f"site-{i + 1}",
                role=role,
            )
            for i, (ds, _version, role) in enumerate(chosen)
        ]
        # One event per chain: the coordinator's lists every site; each other owner hears of its own.
        audit_record(
            action="federation.created",
            tenant=tenant,
            target=fed,
            details={"spec_hash": fed.spec_hash, "min_sites": k, "sites": [_site_ref(s) for s in created]},
        )
        for owner_id, owned in _by_owner(created, exclude=tenant.pk).items():
            audit_record(
                action="federation.site_invited",
                tenant=owner_id,
                target=owned[0],
                details={"federation": fed.pk, "coordinator": tenant.pk, "sites": [_site_ref(s) for s in owned]},
            )
    append_event(fed, "state", {"status": fed.status})
    return fed


def _dp_row_problems(fspec: FederationSpec, version: DatasetVersion) -> list[str]:
    rows = int(version.rows or 0)
    try:
        fspec.check_dp_against_rows(rows)
    except SpecError as exc:
        return [m for ms in exc.fields.values() for m in ms] or [str(exc)]
    return []


def _site_ref(site: FederationSite) -> dict[str, Any]:
    return {"site": site.label, "dataset": site.dataset_id, "role": site.role}


def _by_owner(sites: list[FederationSite], *, exclude: int) -> dict[int, list[FederationSite]]:
    """Sites grouped by owning tenant (other than ``exclude``), in site order."""
    out: dict[int, list[FederationSite]] = {}
    for s in sites:
        if s.tenant_id != exclude:
            out.setdefault(s.tenant_id, []).append(s)
    return out


def _audit_site(site: FederationSite, coordinator_action: str, owner_action: str, details: dict[str, Any]) -> None:
    """One event in the coordinator's chain and one in the owner's (once when they are the same)."""
    base = {"federation": site.federation_id, "site": site.label, "dataset": site.dataset_id, **details}
    if site.tenant_id == site.coordinator_id:
        audit_record(action=owner_action, tenant=site.tenant_id, target=site, details=base)
        return
    audit_record_both(
        actions=(coordinator_action, owner_action),
        tenants=(site.coordinator_id, site.tenant_id),
        target=site,
        details=base,
    )


# --- the digest an owner approves ---------------------------------------------------------------


ROUND_0_TABULAR = (
    "aggregates of the training split: per numeric column count, sum and sum of squares; per categorical "
    "column value counts (a value enters the shared vocabulary only if at least 2 sites and 5 rows hold it); "
    "label class counts. No row."
)
ROUND_0_TEXT = (
    "aggregates of the training split: for the text columns, in how many notes each word occurs (only words "
    "in at least 2 of this site's notes, at most 20,000; a word enters the shared vocabulary only if at least "
    "2 sites and 5 notes hold it, every other word is unknown to the model); label class counts. No row, no note."
)
ROUND_0_TEXT_TOKENIZER = (
    "aggregates of the training split: nothing about the text (the model brings its own shipped, checksummed "
    "tokenizer); label class counts. No row, no note."
)


def _round_0_disclosure(fspec: FederationSpec) -> str:
    """The round-0 sentence of the digest, for the model the spec names."""
    from workers.training.models import model_inputs, text_tokenizer  # imports torch: only for a digest

    name = fspec.train.model.name
    if model_inputs(name) != "text":
        return ROUND_0_TABULAR
    return ROUND_0_TEXT if text_tokenizer(name) is None else ROUND_0_TEXT_TOKENIZER


def _evaluator_disclosure(site: FederationSite) -> dict[str, str]:
    rows = "all this dataset's rows" if site.role == FederationSite.Role.CENTRAL else "this site's validation split"
    return {
        "round_0": "nothing (this site does not train)",
        "kept_by_the_platform": (
            "on the platform's workers (not your own fl worker), while the federation runs: the encoded rows it "
            "scores, sealed under a key derived from your version's data key (unreadable once your key is "
            "destroyed); deleted when the site is dropped or the federation ends"
        ),
        "training_rounds": f"the global model's loss and metrics on {rows}, and their count; no model delta",
    }


def site_digest(site: FederationSite, federation: Federation) -> dict[str, Any]:
    """What the owner is asked to approve, and its SHA-256: the spec (by hash) and the parts of
    it that decide what leaves the site, the privacy asked for, and what the coordinator sees."""
    fspec = FederationSpec.from_dict(federation.spec)
    shown = {
        "federation": federation.pk,
        "coordinator": federation.tenant_id,
        "dataset": site.dataset_id,
        "site": site.label,
        "role": site.role,
        "spec_hash": federation.spec_hash,
        "strategy": {"name": fspec.strategy.name, "params": dict(fspec.strategy.params)},
        "rounds": fspec.rounds,
        "local": {"epochs": fspec.train.epochs, "local_steps": fspec.local_steps, "model": fspec.train.model.name},
        "dp": {
            "mode": fspec.dp.mode,
            "requested_epsilon": fspec.dp.target_epsilon,
            "delta": fspec.dp.delta if fspec.dp.mode != "none" else None,
            "noise_multiplier": fspec.dp.noise_multiplier,
        },
        "update_bound": fspec.update_bound,
        "leaves_the_site": _evaluator_disclosure(site)
        if site.role != FederationSite.Role.TRAIN
        else {
            "round_0": _round_0_disclosure(fspec),
            "kept_by_the_platform": (
                "on the platform's workers (not your own fl worker), while the federation runs: this site's "
                "encoded training and validation rows, sealed under a key derived from your version's data key, "
                "so the next round skips decoding the version; unreadable once your key is destroyed, never used "
                "once the grant ends; deleted when the site is dropped or the federation ends"
            ),
            "training_rounds": (
                "the DP-SGD model delta (local minus global weights), example count and the DP accounting "
                "(steps, noise multiplier, sampling rate); no training loss or metric"
                if fspec.dp.mode == "local"
                else "the model delta (local minus global weights), example count, training loss and metrics"
            ),
        },
        "coordinator_sees": {
            "global_metrics": True,
            "site_status": True,
            "site_metrics_and_counts": "only if you allow it (share_metrics)",
            "rows": False,
            "site_statistics": False,
        },
    }
    blob = json.dumps(shown, sort_keys=True, separators=(",", ":"), default=str)
    return {"digest": hashlib.sha256(blob.encode()).hexdigest(), "shown": shown}


def approval_valid(site: FederationSite, federation: Federation, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    return (
        site.approval == FederationSite.Approval.APPROVED
        and site.approved_digest == site_digest(site, federation)["digest"]
        and (site.approval_expires_at is None or site.approval_expires_at > now)
    )


def site_decide(
    *,
    tenant: Tenant,
    site: FederationSite,
    approve: bool,
    digest: str,
    decided_by: Any,
    expires_at: datetime | None = None,
    share_metrics: bool = False,
    note: str = "",
) -> FederationSite:
    """The owner approves (the digest it was shown) or rejects a site of a draft federation."""
    if site.tenant_id != tenant.pk:  # the access helper already answers 404 for others
        raise NotFound(reason="not_owner", tenant_id=tenant.pk, target_type="federation.federationsite")
    fed = Federation.all_tenants.get(pk=site.federation_id)
    if fed.status != Federation.Status.DRAFT:
        raise Conflict(f"The federation is {fed.status}; only a draft's sites are decided. Revoke instead.")
    current = site_digest(site, fed)["digest"]
    if approve and digest != current:
        raise Conflict("The digest does not match the federation as it is now; fetch it again and review.")
    now = timezone.now()
    if expires_at is not None and (expires_at <= now or expires_at > now + timedelta(days=MAX_APPROVAL_DAYS)):
        raise Invalid(fields={"expires_at": [f"Must be in the future, within {MAX_APPROVAL_DAYS} days."]})
    with audited_change():
        site.approval = FederationSite.Approval.APPROVED if approve else FederationSite.Approval.REJECTED
        site.approved_digest = current if approve else ""
        site.approval_expires_at = expires_at if approve else None
        site.share_metrics = bool(share_metrics) if approve else False
        site.decided_by = _user(decided_by)
        site.decided_at = now
        site.decision_note = note[:500]
        site.save()
        _audit_site(
            site,
            "federation.site_approved" if approve else "federation.site_rejected",
            "federation.site_approved" if approve else "federation.site_rejected",
            {"digest": current, "expires_at": expires_at.isoformat() if expires_at else None,
             "share_metrics": site.share_metrics},
        )  # fmt: skip
    append_event(fed, "site", {"approval": site.approval}, site_id=site.pk)
    return site


def site_revoke(*, tenant: Tenant, site: FederationSite, revoked_by: Any, note: str = "") -> FederationSite:
    """The owner withdraws its approval: a running federation drops the site at its next round
    (its unaggregated update is discarded)."""
    if site.approval == FederationSite.Approval.REVOKED:
        raise Conflict("This site's approval is already revoked.")
    fed = Federation.all_tenants.get(pk=site.federation_id)
    with audited_change():
        site.approval = FederationSite.Approval.REVOKED
        site.decided_by = _user(revoked_by)
        site.decided_at = timezone.now()
        site.decision_note = note[:500]
        site.save()
        _audit_site(site, "federation.site_revoked", "federation.site_revoked", {"status": fed.status})
    append_event(fed, "site", {"approval": site.approval}, site_id=site.pk)
    return site


# --- start and cancel ----------------------------------------------------------------------------


def federation_start(*, tenant: Tenant, federation: Federation, started_by: Any) -> Federation:
    """Start a draft once ``min_sites`` training sites hold a valid approval: pin each approved
    site's released version, reserve the projected ε on every dataset's ledger (a shortfall is
    ``budget_exceeded`` naming the dataset, and nothing starts), then open round 0."""
    from apps.federation.services import rounds as round_services

    fed = Federation.objects.select_for_update().get(pk=federation.pk)
    if fed.status != Federation.Status.DRAFT:
        raise Conflict(f"The federation is {fed.status}, not a draft.")
    fspec = FederationSpec.from_dict(fed.spec)
    sites = list(FederationSite.all_tenants.filter(federation=fed).order_by("id"))
    now = timezone.now()
    approved = [s for s in sites if approval_valid(s, fed, now)]
    trainers = [s for s in approved if s.role == FederationSite.Role.TRAIN]
    if len(trainers) < fed.min_sites:
        waiting = {s.label: s.approval for s in sites if s not in approved}
        raise Unprocessable(
            f"{len(trainers)} of the {fed.min_sites} training sites needed hold a valid approval.",
            code="approvals_missing",
            details={"not_approved": waiting},
            http_status=409,
        )
    central = [s for s in sites if s.role == FederationSite.Role.CENTRAL]
    if central and central[0] not in approved:
        raise Unprocessable(
            f"The central set ({central[0].label}) holds no valid approval.",
            code="approvals_missing",
            details={"not_approved": {central[0].label: central[0].approval}},
            http_status=409,
        )
    try:
        fspec.validate(n_sites=len(trainers))
    except SpecError as exc:
        raise Invalid(str(exc), fields={_spec_path(k): v for k, v in exc.fields.items()}) from None
    versions: dict[int, DatasetVersion] = {}
    for s in approved:
        if not dataset_selectors.dataset_access(consumer=tenant, dataset_id=s.dataset_id, permission="federate"):
            raise Conflict(f"{s.label}: the grant on its dataset is no longer live.")
        ds = dataset_selectors.dataset_for_federation(dataset_id=s.dataset_id)
        v = dataset_selectors.latest_deidentified(dataset=ds, shared=True)
        if v is None:
            raise Conflict(f"{s.label}: its dataset has no released version.")
        versions[s.pk] = v
    for s in trainers:  # local DP: delta < 1/N, q <= 1 and the projected ε within the cap, per site
        try:
            fspec.check_dp_against_rows(max(1, int(versions[s.pk].rows or 0)))
        except SpecError as exc:
            raise Invalid(
                f"{s.label}: {exc.message}", fields={_spec_path(k): v for k, v in exc.fields.items()}
            ) from None
    with audited_change():
        reservations = _reserve_budgets(tenant, fed, fspec, approved, versions, started_by)
        for s in approved:
            s.version = versions[s.pk]
            s.version_sha256 = versions[s.pk].content_sha256 or ""
            s.reservation = reservations.get(s.pk)
            s.save(update_fields=["version", "version_sha256", "reservation"])
        for s in sites:
            if s not in approved:
                s.active = False
                s.dropped_reason = f"not approved at start ({s.approval})"
                s.save(update_fields=["active", "dropped_reason"])
        fed.status = Federation.Status.RUNNING
        fed.started_at = now
        fed.seed_secret = secrets.token_hex(32)
        fed.save(update_fields=["status", "started_at", "seed_secret"])
        audit_record(
            action="federation.started",
            tenant=tenant,
            target=fed,
            details={"sites": [s.label for s in approved], "reserved": len(reservations)},
        )
        for owner_id, owned in _by_owner(approved, exclude=tenant.pk).items():
            audit_record(
                action="federation.site_started",
                tenant=owner_id,
                target=owned[0],
                details={
                    "federation": fed.pk,
                    "sites": [{**_site_ref(s), "version": versions[s.pk].pk} for s in owned],
                },
            )
        transaction.on_commit(lambda: round_services.open_round_after_start(fed.tenant_id, fed.pk))
    append_event(fed, "state", {"status": fed.status})
    return fed


def _reserve_budgets(
    tenant: Tenant,
    fed: Federation,
    fspec: FederationSpec,
    sites: list[FederationSite],
    versions: dict[int, DatasetVersion],
    started_by: Any,
) -> dict[int, BudgetReservation]:
    """DP: each training site's dataset reserves the projected ε of all rounds (local DP: its own
    row count decides it; central DP: site-level, the same for every dataset). All or nothing: the
    caller's transaction rolls every one back on a refusal."""
    from apps.datasets.services import budget_reserve

    if fspec.dp.mode == "none":
        return {}
    out: dict[int, BudgetReservation] = {}
    for s in sites:
        if s.role != FederationSite.Role.TRAIN:
            continue
        eps, delta = projected_privacy(fspec, int(versions[s.pk].rows or 0))
        ds = dataset_selectors.dataset_for_federation(dataset_id=s.dataset_id)
        try:
            budget = dataset_selectors.budget_for(dataset=ds)
        except Exception:
            raise BudgetExceeded(
                f"Dataset {s.dataset_id} ({s.label}) has no privacy budget.",
                details={"dataset_id": s.dataset_id, "site": s.label},
            ) from None
        try:
            out[s.pk] = budget_reserve(
                consumer=tenant,
                budget=budget,
                epsilon=Decimal(str(round(eps, 6))),
                delta=Decimal(str(delta)),
                purpose=f"federation {fed.pk}: {fed.name}"[:200],
                reference=f"federation:{fed.pk}:{s.label}",
                created_by=_user(started_by),
            )
        except Unprocessable as exc:
            raise BudgetExceeded(
                f"Dataset {s.dataset_id} ({s.label}): {exc.message}",
                details={"dataset_id": s.dataset_id, "site": s.label, "cause": exc.code, **exc.details},
            ) from None
    return out


def projected_privacy(fspec: FederationSpec, rows: int) -> tuple[float, float]:
    """(ε, δ) the whole run spends on a dataset of ``rows`` rows (the accountant's projection)."""
    from workers.federated.spec import projected_epsilon

    eps = projected_epsilon(fspec, n_rows=rows)
    return float(eps), float(fspec.dp.delta)


def federation_cancel(*, tenant: Tenant, federation: Federation, cancelled_by: Any) -> Federation:
    """Cancel a draft or running federation: open slots are excluded, the spend of every update
    that left a site is committed and the rest of each reservation released."""
    from apps.federation.services import rounds as round_services

    fed = Federation.objects.select_for_update().get(pk=federation.pk)
    if fed.status in Federation.TERMINAL:
        raise Conflict(f"The federation is already {fed.status}.")
    # One audited change: ``federation.cancelled`` (and each other owner's) records who cancelled.
    round_services.finish_locked_audited(fed, Federation.Status.CANCELLED, "cancelled by the coordinator")
    fed.refresh_from_db()
    return fed
