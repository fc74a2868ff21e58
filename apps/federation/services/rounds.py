"""Rounds, with all state in PostgreSQL and no long-lived coordinator.

* :func:`open_round` selects the round's sites (seeded, recorded), creates one slot per site and
  enqueues ``federation.site_round`` for each, plus ``federation.advance`` at the deadline.
* :func:`run_site_round` (the site task) claims its slot with a lease, decrypts the site's pinned
  version under the coordinator's federate grant, and either reports round-0 statistics or
  evaluates the round's base model and trains from it with the secret per-(federation, site,
  round) seed; the update is validated, stored encrypted, and recorded once (fenced by the lease
  and the round still being open: a late update gets "round closed").
* :func:`advance` closes the open round under the federation's row lock when every slot is done,
  or the deadline passed with a quorum of updates: it merges statistics (round 0), aggregates in
  participant order (training rounds) or reports (the final evaluation), then opens the next.
* :func:`sweep` (beat) advances past deadlines and re-enqueues slots whose worker vanished.

A killed worker leaves its slot ``training`` with a lease that expires; the sweep sends it again;
the retry reproduces the update bit for bit (same seed, same base model), and a duplicate delivery
finds the slot taken or done. Aggregation reads stored updates only, so re-running it gives the
same model hash.
"""

from __future__ import annotations

import io
import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.common.dispatch import enqueue, send
from apps.datasets import selectors as dataset_selectors
from apps.datasets.services import VERSION_KIND
from apps.datasets.storage import open_decrypted
from apps.federation.models import Federation, FederationSite, Round, SiteRound
from apps.federation.services import prepared_store, site_cache, storage
from apps.federation.services.admission import POOL, SITE_TASK, admit_if_waiting, admit_sites
from apps.federation.services.events import append_event, append_events
from apps.tenancy.models import Tenant
from apps.tenancy.scope import platform_scope, tenant_scope
from apps.training.scheduler import record_usage
from workers.federated.spec import FederationSpec

logger = logging.getLogger(__name__)

ADVANCE_TASK = "federation.advance"

# Sites that score the global model and never train.
EVALUATORS = (FederationSite.Role.EVALUATE, FederationSite.Role.CENTRAL)


def lease_seconds() -> int:
    return int(getattr(settings, "COHORT_FL_LEASE_SECONDS", 60))


def queue_for(site: FederationSite, tenant_slug: str | None = None) -> str:
    """``fl``, or ``fl.<owner slug>`` for an owner that runs its own worker
    (``COHORT_FL_OWN_WORKER_TENANTS``)."""
    own = set(getattr(settings, "COHORT_FL_OWN_WORKER_TENANTS", []) or [])
    if tenant_slug is None and own:
        tenant_slug = Tenant.objects.filter(pk=site.tenant_id).values_list("slug", flat=True).first()
    return f"fl.{tenant_slug}" if tenant_slug and tenant_slug in own else "fl"


# --- opening a round -------------------------------------------------------------------------------


def open_round_after_start(tenant_id: int, federation_id: int) -> None:
    with tenant_scope(tenant_id):
        fed = Federation.objects.get(pk=federation_id)
        open_round(fed, 0, "statistics")


def _still_allowed(site: FederationSite, fed: Federation) -> str:
    """Why ``site`` may no longer take part ("" when it may)."""
    if site.approval != FederationSite.Approval.APPROVED:
        return f"approval {site.approval}"
    if site.approval_expires_at is not None and site.approval_expires_at <= timezone.now():
        return "approval expired"
    if not dataset_selectors.dataset_access(
        consumer=Tenant(pk=fed.tenant_id), dataset_id=site.dataset_id, permission="federate"
    ):
        return "grant revoked or expired"
    return ""


def _drop_withdrawn(fed: Federation) -> list[FederationSite]:
    """Mark sites whose approval or grant went away as dropped; the active sites that remain."""
    active = []
    for site in FederationSite.all_tenants.filter(federation=fed, active=True).order_by("id"):
        reason = _still_allowed(site, fed)
        if reason:
            site.active, site.dropped_reason = False, reason[:200]
            site.save(update_fields=["active", "dropped_reason"])
            prepared_store.purge(fed, site)
            audit_record(
                action="federation.site_dropped",
                tenant=fed.tenant_id,
                target=site,
                details={"site": site.label, "reason": reason},
            )
            append_event(fed, "site", {"state": "dropped", "reason": reason}, site_id=site.pk)
        else:
            active.append(site)
    return active


def open_round(fed: Federation, number: int, kind: str) -> Round | None:
    """Create round ``number`` with its slots and send its tasks (in the coordinator's scope)."""
    from workers.federated.rounds import select_sites

    fspec = FederationSpec.from_dict(fed.spec)
    with audited_change():
        active = _drop_withdrawn(fed)
        trainers = [s for s in active if s.role == FederationSite.Role.TRAIN]
        evaluators = [s for s in active if s.role in EVALUATORS]
        if len(trainers) < max(1, min(fspec.min_participants, fed.min_sites)):
            audit_record(action="federation.round_refused", tenant=fed.tenant_id, target=fed,
                         details={"round": number, "trainers": len(trainers)})  # fmt: skip
            finish_locked(fed, Federation.Status.FAILED, f"only {len(trainers)} training sites remain")
            return None
        seed = (fspec.seed * 1_000_003 + number) % (2**62)
        if kind == "train":
            per_round = fspec.participants_per_round(len(trainers))
            chosen = select_sites(
                [s.pk for s in trainers],
                round_number=number,
                per_round=per_round,
                seed=fspec.seed,
                last_selected={s.pk: s.last_selected_round for s in trainers},
            )
            selected = sorted(chosen) + [s.pk for s in evaluators]
        elif kind == "statistics":  # only what the encoders are merged from leaves a site
            selected = [s.pk for s in trainers]
        else:
            selected = [s.pk for s in active]
        deadline = timezone.now() + timedelta(seconds=fspec.round_deadline_seconds)
        base = Round.objects.filter(federation=fed, number=number - 1).first() if number > 0 else None
        rnd = Round.objects.create(
            tenant_id=fed.tenant_id,
            federation=fed,
            number=number,
            kind=kind,
            seed=seed,
            selected=selected,
            deadline=deadline,
            base_digest=base.model_digest if base else "",
        )
        sites = {s.pk: s for s in active}
        slugs = dict(Tenant.objects.filter(pk__in={s.tenant_id for s in active}).values_list("pk", "slug"))
        now = timezone.now()
        slots = []
        for pk in selected:
            queue = queue_for(sites[pk], slugs.get(sites[pk].tenant_id, ""))
            # The platform's pool waits for admission; an owner's own worker starts at once.
            admitted = None if queue == POOL else now
            slots.append(SiteRound.objects.create(tenant_id=fed.tenant_id, round=rnd, site_id=pk, queue=queue,
                                                  admitted_at=admitted, enqueued_at=admitted))  # fmt: skip
        FederationSite.all_tenants.filter(pk__in=[pk for pk in selected if sites[pk].role == "train"]).update(
            last_selected_round=number
        )
        Federation.objects.filter(pk=fed.pk).update(current_round=number)
        audit_record(
            action="federation.round_opened",
            tenant=fed.tenant_id,
            target=rnd,
            details={
                "federation": fed.pk,
                "round": number,
                "kind": kind,
                "selected": [sites[p].label for p in selected],
            },
        )
        for slot in slots:
            if slot.admitted_at is not None:
                enqueue(SITE_TASK, args=(fed.tenant_id, slot.pk), queue=slot.queue)
        enqueue(ADVANCE_TASK, args=(fed.tenant_id, fed.pk), countdown=fspec.round_deadline_seconds + 0.2)
    opened = {"status": "open", "kind": kind, "selected": [sites[p].label for p in selected],
              "deadline": deadline.isoformat()}  # fmt: skip
    append_events(
        fed,
        [("round", opened, number, None)] + [("site", {"state": "selected"}, number, slot.site_id) for slot in slots],
    )
    admit_sites()  # the pool's slots: admitted (their tasks sent) or told why they wait; after commit
    return rnd


# --- the site task ---------------------------------------------------------------------------------


class _LeaseKeeper:
    """Renews a slot's lease from a thread while the site trains; stops on loss."""

    def __init__(self, tenant_id: int, slot_id: int, owner: str) -> None:
        self.tenant_id, self.slot_id, self.owner = tenant_id, slot_id, owner
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self._stop.wait(max(0.5, lease_seconds() / 3)):
                if not self.renew():
                    self.lost.set()
                    return
        finally:
            connection.close()

    def renew(self) -> bool:
        with tenant_scope(self.tenant_id):
            return bool(
                SiteRound.objects.filter(
                    pk=self.slot_id, lease_owner=self.owner, state=SiteRound.State.TRAINING
                ).update(lease_until=timezone.now() + timedelta(seconds=lease_seconds()))
            )


def claim(tenant_id: int, slot_id: int) -> tuple[SiteRound, str] | None:
    """Take the slot: selected, or training with an expired lease (its worker died), in an open
    round of a running federation. None for a duplicate delivery or a closed round."""
    now = timezone.now()
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with tenant_scope(tenant_id):
        n = SiteRound.objects.filter(
            Q(state=SiteRound.State.SELECTED) | Q(state=SiteRound.State.TRAINING, lease_until__lt=now),
            pk=slot_id,
            admitted_at__isnull=False,
            round__status=Round.Status.OPEN,
            round__federation__status=Federation.Status.RUNNING,
        ).update(
            state=SiteRound.State.TRAINING,
            attempts=F("attempts") + 1,
            lease_owner=owner,
            lease_until=now + timedelta(seconds=lease_seconds()),
        )
        slot = SiteRound.objects.select_related("round", "round__federation").filter(pk=slot_id).first()
    if not n or slot is None:
        return None
    return slot, owner


def _site_of(slot: SiteRound) -> FederationSite:
    return FederationSite.all_tenants.select_related("version").get(pk=slot.site_id)


def _load_table(fed: Federation, site: FederationSite) -> tuple[pa.Table, Any]:
    from workers.schema import DatasetSchema

    version = site.version
    assert version is not None
    key = dataset_selectors.version_key(consumer=Tenant(pk=fed.tenant_id), version=version, permission="federate")
    reader = open_decrypted(version.tenant_id, VERSION_KIND, version.pk, version.storage_name, key)
    with reader:
        table = pq.read_table(pa.PythonFile(reader, mode="r"), pre_buffer=False)
    return table, DatasetSchema.from_dict(version.schema)


def load_round_model(fed: Federation, rnd: Round) -> dict[str, torch.Tensor]:
    assert rnd.model_key_id is not None, f"round {rnd.number} has no model"
    from apps.vault.models import DataKey

    key = DataKey.objects.get(pk=rnd.model_key_id)
    return storage.load_tensors(fed.tenant_id, fed.pk, f"r{rnd.number}/model", rnd.model_storage_name, key)


def _finish_slot(tenant_id: int, slot: SiteRound, owner: str, state: str, **fields: Any) -> bool:
    """Record the slot's outcome once: only the lease holder, only while the round is open."""
    with tenant_scope(tenant_id):
        done = SiteRound.objects.filter(
            pk=slot.pk, lease_owner=owner, state=SiteRound.State.TRAINING, round__status=Round.Status.OPEN
        ).update(state=state, finished_at=timezone.now(), lease_until=None, **fields)
    return bool(done)


def run_site_round(tenant_id: int, slot_id: int) -> str:
    """The site task's body. Returns the slot's new state or why nothing ran."""
    got = claim(tenant_id, slot_id)
    if got is None:
        return "ignored"
    slot, owner = got
    rnd = slot.round
    fed = rnd.federation  # read with the slot, in the claim's transaction
    with tenant_scope(tenant_id):
        site = _site_of(slot)
        reason = _still_allowed(site, fed)
    fspec = FederationSpec.from_dict(fed.spec)
    if reason:
        _finish_slot(tenant_id, slot, owner, SiteRound.State.EXCLUDED, reason=reason[:300])
        _after_slot(fed, site, rnd, SiteRound.State.EXCLUDED, {"reason": reason})
        return SiteRound.State.EXCLUDED
    started = time.monotonic()
    append_event(fed, "site", {"state": "training", "attempt": slot.attempts}, round_number=rnd.number, site_id=site.pk)
    try:
        with _LeaseKeeper(tenant_id, slot.pk, owner) as keeper:
            try:
                outcome = _work(fed, fspec, rnd, site, slot)
            finally:
                _charge(fed, fspec, slot, time.monotonic() - started)
            if keeper.lost.is_set():
                return "lease_lost"
    except Exception as exc:  # the slot keeps the error envelope; the round goes on without it
        logger.exception("federation %s round %s %s failed", fed.pk, rnd.number, site.label)
        error = {"code": "site_failed", "message": f"{type(exc).__name__}: {str(exc)[:300]}"}
        if _finish_slot(tenant_id, slot, owner, SiteRound.State.FAILED, reason=error["message"][:300], error=error):
            _after_slot(
                fed,
                site,
                rnd,
                SiteRound.State.FAILED,
                {"error": error, "seconds": round(time.monotonic() - started, 3)},
            )
        return SiteRound.State.FAILED
    outcome["fields"]["seconds"] = round(time.monotonic() - started, 3)
    state = outcome["state"]
    with tenant_scope(tenant_id), audited_change():
        recorded = _finish_slot(tenant_id, slot, owner, state, submitted_at=timezone.now(), **outcome["fields"])
        if not recorded:
            audit_record(
                action="federation.update_late",
                tenant=fed.tenant_id,
                target=slot,
                details={"round": rnd.number, "site": site.label, "reason": "round closed"},
            )
        else:
            details = {"federation": fed.pk, "round": rnd.number, "site": site.label, "state": state,
                       **{k: outcome["fields"].get(k) for k in ("n_examples", "update_norm", "update_digest", "epsilon")
                          if outcome["fields"].get(k) is not None}}  # fmt: skip
            if state == SiteRound.State.REJECTED:
                details["rejection"] = outcome["fields"]["error"]
            action = (
                "federation.update_rejected" if state == SiteRound.State.REJECTED else "federation.update_submitted"
            )
            audit_record(action=action, tenant=fed.tenant_id, target=slot, details=details)
            if site.tenant_id != fed.tenant_id:
                audit_record(action=action, tenant=site.tenant_id, target=site, details=details)
    if not recorded:
        if outcome.get("storage_name"):
            storage_delete(outcome["storage_name"])
        append_event(fed, "site", {"state": "late", "reason": "round closed"}, round_number=rnd.number, site_id=site.pk)
        return "round_closed"
    public = {
        k: outcome["fields"].get(k) for k in ("n_examples", "n_eval", "loss", "update_norm", "seconds", "epsilon")
    }
    if outcome["fields"].get("eval_metrics"):  # the base model's, on this site's rows (filtered like counts)
        public["metrics"] = outcome["fields"]["eval_metrics"]
    _after_slot(
        fed,
        site,
        rnd,
        state,
        {**public, **({"error": outcome["fields"]["error"]} if "error" in outcome["fields"] else {})},
    )
    return state


def _charge(fed: Federation, fspec: FederationSpec, slot: SiteRound, seconds: float) -> None:
    """The site task's worker time goes on the coordinator's usage ledger (the platform's pool
    only: an owner's own worker is the owner's machine)."""
    if slot.queue != POOL:
        return
    gpu = fspec.train.device != "cpu" and torch.cuda.is_available()
    try:
        record_usage(fed.tenant_id, "gpu" if gpu else "cpu", seconds)
    except Exception:  # bookkeeping must not fail the site's update
        logger.warning("could not record site-task usage for federation %s", fed.pk, exc_info=True)


def storage_delete(name: str) -> None:
    from apps.datasets.storage import delete_object

    try:
        delete_object(name)
    except Exception:
        logger.warning("could not delete a discarded update %s", name, exc_info=True)


def _after_slot(fed: Federation, site: FederationSite, rnd: Round, state: str, data: dict[str, Any]) -> None:
    append_event(fed, "site", {"state": state, **data}, round_number=rnd.number, site_id=site.pk)
    # The round may close now only if this was the last slot, or the deadline passed (with a
    # quorum). Each finisher looks after its own commit, so of two finishing at once the later one
    # sees both done; the deadline's own advance and the sweep cover the rest.
    with tenant_scope(fed.tenant_id):
        open_slots = SiteRound.objects.filter(round_id=rnd.pk).exclude(state__in=SiteRound.DONE).exists()
    if not open_slots or (rnd.deadline is not None and rnd.deadline <= timezone.now()):
        enqueue(ADVANCE_TASK, args=(fed.tenant_id, fed.pk))
    admit_if_waiting()  # this slot's place in the pool is free


def _work(fed: Federation, fspec: FederationSpec, rnd: Round, site: FederationSite, slot: SiteRound) -> dict[str, Any]:
    """What the site computes for its slot (decrypted data stays in this process's memory)."""
    from workers.federated.stats import site_statistics
    from workers.training.data import prepare_with_encoders

    if rnd.kind == "statistics":
        with tenant_scope(fed.tenant_id):
            table, schema = _load_table(fed, site)
        stats = site_statistics(table, schema, fspec.train)
        return {"state": SiteRound.State.SUBMITTED, "fields": {"statistics": stats, "n_examples": stats.get("n_rows")}}

    digest = site_cache.inputs_digest(fed.encoders, fed.spec.get("train", {}))

    def prepare() -> Any:
        # Another worker (or this one before a restart) may have kept them, encrypted.
        stored = prepared_store.inputs_digest(site, digest)
        keep = slot.queue == POOL  # an owner's own worker keeps nothing in the platform's storage
        # A hit checks the owner's key and the grant once, and raises as reading the version would
        # when they are gone (a crypto-shred reaches the cache too); an unreadable entry is a miss.
        cached = prepared_store.load(fed, site, stored) if keep else None
        if cached is not None:
            return cached
        with tenant_scope(fed.tenant_id):
            table, schema = _load_table(fed, site)
        prepared = prepare_with_encoders(table, schema, fspec.train, fed.encoders)
        try:
            if keep:
                prepared_store.save(fed, site, stored, prepared)
        except Exception:  # a cache must not fail the site's task
            logger.warning("could not cache the prepared tensors of site %s", site.pk, exc_info=True)
        return prepared

    def base_model() -> dict[str, torch.Tensor]:
        with tenant_scope(fed.tenant_id):
            return load_round_model(fed, Round.objects.get(federation=fed, number=rnd.number - 1))

    # The same inputs every round: kept in this worker's memory (site_cache) and encrypted for any
    # worker (prepared_store), keyed by what they were computed from; access was checked above.
    prepared = site_cache.PREPARED.get_or_compute((fed.pk, site.pk, site.version_id, digest), prepare)
    base = (
        site_cache.MODELS.get_or_compute((fed.pk, rnd.number - 1, rnd.base_digest), base_model)
        if rnd.base_digest
        else base_model()
    )
    from workers.federated.rounds import evaluate_state

    if site.role == FederationSite.Role.CENTRAL:  # a central set is held out whole: all its rows
        prepared = all_rows(prepared)
    eval_metrics = evaluate_state(fspec, prepared, base)
    fields: dict[str, Any] = {"eval_metrics": eval_metrics, "n_eval": len(prepared.y_val)}
    if rnd.kind == "evaluate" and site.role == FederationSite.Role.TRAIN and fspec.evaluation.local_baseline:
        fields["train_metrics"] = {"local_only": _local_only(fed, fspec, site, prepared)}
    if rnd.kind != "train" or site.role != FederationSite.Role.TRAIN:
        return {"state": SiteRound.State.SUBMITTED, "fields": fields}
    return _train_update(fed, fspec, rnd, site, slot, prepared, base, fields)


def _local_only(fed: Federation, fspec: FederationSpec, site: FederationSite, prepared: Any) -> dict[str, float]:
    """The final report's baseline at a training site: a local-only model from the round-0 model
    (``workers.federated.rounds.local_only_metrics``), scored on the site's validation split."""
    from workers.federated.rounds import local_only_metrics

    with tenant_scope(fed.tenant_id):
        initial = load_round_model(fed, Round.objects.get(federation=fed, number=0))
    rows = int(site.version.rows or 0) if site.version is not None else len(prepared.y_train)
    metrics = local_only_metrics(fspec, prepared, initial, bytes.fromhex(fed.seed_secret), fed.pk, site.pk, rows)
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def _train_update(
    fed: Federation,
    fspec: FederationSpec,
    rnd: Round,
    site: FederationSite,
    slot: SiteRound,
    prepared: Any,
    base: dict[str, torch.Tensor],
    fields: dict[str, Any],
) -> dict[str, Any]:
    from workers.federated.rounds import local_update, site_seed
    from workers.federated.validate import UpdateRejected, load_update, update_l2_norm, validate_update
    from workers.training.weights import save_weights

    seed = site_seed(bytes.fromhex(fed.seed_secret), fed.pk, site.pk, rnd.number)
    dp_rows, dp_history = _site_privacy_history(fed, fspec, site, rnd)
    upd = local_update(fspec, prepared, base, seed=seed, dp_rows=dp_rows, dp_history=dp_history)
    buf = io.BytesIO()
    save_weights(upd.delta, buf, {"federation": str(fed.pk), "round": str(rnd.number), "site": site.label})
    payload = buf.getvalue()
    nonce = f"{fed.pk}:{rnd.number}:{site.pk}:{uuid.uuid4().hex}"
    fields.update(
        n_examples=int(upd.n_train),
        loss=_finite_or_none(upd.metrics.get("loss", upd.metrics.get("train_loss"))),
        train_metrics={k: float(v) for k, v in upd.metrics.items() if isinstance(v, int | float)}
        | (
            {
                "dp_steps": float(upd.dp_steps),
                "dp_noise_multiplier": upd.privacy_history[-1][0],
                "dp_sample_rate": upd.privacy_history[-1][1],
            }
            if upd.privacy_history
            else {}
        ),
        epsilon=upd.epsilon,
        nonce=nonce,
    )
    max_bytes = int(getattr(settings, "COHORT_FL_MAX_UPDATE_BYTES", 512 * 1024 * 1024))
    try:
        delta = load_update(payload, max_bytes)
        fields["update_norm"] = float(update_l2_norm(delta))
        with tenant_scope(fed.tenant_id):
            seen = set(
                SiteRound.objects.filter(round__federation=fed).exclude(nonce="").values_list("nonce", flat=True)
            )
        validate_update(
            delta,
            base,
            round_id=rnd.number,
            expected_round_id=rnd.number,
            nonce=nonce,
            seen_nonces=seen,
            site_id=site.pk,
            selected_sites=rnd.selected,
            l2_bound=fspec.update_bound,
            max_bytes=max_bytes,
            payload_bytes=len(payload),
        )
    except UpdateRejected as exc:
        fields["error"] = {"code": exc.code, "message": str(exc)[:300], "details": dict(getattr(exc, "details", {}))}
        fields["reason"] = f"rejected: {exc.code}"
        return {"state": SiteRound.State.REJECTED, "fields": fields}
    with tenant_scope(fed.tenant_id):
        name, key, digest, _data = storage.store_tensors(
            fed.tenant_id, fed.pk, f"r{rnd.number}/s{site.pk}", delta, {"round": str(rnd.number), "site": site.label}
        )
    fields.update(update_storage_name=name, update_key=key, update_digest=digest)
    return {"state": SiteRound.State.SUBMITTED, "fields": fields, "storage_name": name}


def _site_privacy_history(
    fed: Federation, fspec: FederationSpec, site: FederationSite, rnd: Round
) -> tuple[int | None, list[tuple[float, float, int]]]:
    """Local DP: the site's row count (its pinned version's, as the start's reservation used) and
    the accountant history of its earlier rounds: every earlier update it computed, submitted or
    rejected (both left the site), as (sigma, q, steps) from its slot."""
    if fspec.dp.mode != "local":
        return None, []
    from workers.training.privacy import compose

    version = site.version
    assert version is not None, f"site {site.pk} runs without a pinned version"
    rows = int(version.rows or 0)
    with tenant_scope(fed.tenant_id):
        earlier = SiteRound.objects.filter(round__federation=fed, round__kind="train", site=site,
                                           round__number__lt=rnd.number).order_by("round__number")  # fmt: skip
        history: list[tuple[float, float, int]] = []
        for m in earlier.values_list("train_metrics", flat=True):
            if m and m.get("dp_steps"):
                history = compose(history, float(m["dp_noise_multiplier"]), float(m["dp_sample_rate"]),
                                  int(m["dp_steps"]))  # fmt: skip
    return rows, history


def fault_point(name: str) -> None:
    """Fault injection for the crash tests (WRK-1): ``COHORT_FAULT_POINT=<name>:<seconds>`` makes
    this process pause there, so a test can kill it at a known point. Unset in production."""
    spec = os.environ.get("COHORT_FAULT_POINT", "")
    if spec.partition(":")[0] == name:
        time.sleep(float(spec.partition(":")[2] or 0))


def _finite_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) != float("inf") else None


# --- advancing -------------------------------------------------------------------------------------


def advance(tenant_id: int, federation_id: int) -> str:
    """Close the open round if it may close; then open the next. Idempotent (row lock)."""
    with tenant_scope(tenant_id):
        fed = Federation.objects.select_for_update().filter(pk=federation_id).first()
        if fed is None or fed.status != Federation.Status.RUNNING:
            return "not_running"
        if fed.cancel_requested:
            finish_locked(fed, Federation.Status.CANCELLED, "cancelled by the coordinator")
            return "cancelled"
        rnd = Round.objects.select_for_update().filter(federation=fed, number=fed.current_round).first()
        if rnd is None or rnd.status != Round.Status.OPEN:
            return "no_open_round"
        fspec = FederationSpec.from_dict(fed.spec)
        slots = list(SiteRound.objects.select_for_update().filter(round=rnd).order_by("site_id"))
        sites = {s.pk: s for s in FederationSite.all_tenants.filter(federation=fed)}
        now = timezone.now()
        passed = rnd.deadline is not None and now >= rnd.deadline
        all_in = all(s.state in SiteRound.DONE for s in slots)
        submitted = [
            s
            for s in slots
            if s.state == SiteRound.State.SUBMITTED and sites[s.site_id].role == FederationSite.Role.TRAIN
        ]
        selected_trainers = [s for s in slots if sites[s.site_id].role == FederationSite.Role.TRAIN]
        quorum = min(fspec.quorum or len(selected_trainers), len(selected_trainers))
        if not all_in and not passed:  # past the deadline: close with the quorum, or fail without it
            return "waiting"
        with audited_change():
            late = [s for s in slots if s.state not in SiteRound.DONE]
            for s in late:
                s.state, s.reason, s.finished_at, s.lease_until = (
                    SiteRound.State.TIMED_OUT,
                    "round closed at the deadline"
                    + (f" before the site task was admitted ({s.wait_reason})" if s.admitted_at is None else ""),
                    now,
                    None,
                )
                s.reason = s.reason[:300]
                s.save(update_fields=["state", "reason", "finished_at", "lease_until"])
            # A site whose approval or grant went away meanwhile: its unaggregated update is discarded.
            for s in slots:
                if s.state == SiteRound.State.SUBMITTED and _still_allowed(sites[s.site_id], fed):
                    s.state, s.reason = SiteRound.State.EXCLUDED, "withdrawn before aggregation: update discarded"
                    s.save(update_fields=["state", "reason"])
            submitted = [s for s in submitted if s.state == SiteRound.State.SUBMITTED]
            audit_record(
                action="federation.round_closing",
                tenant=fed.tenant_id,
                target=rnd,
                details={"round": rnd.number, "submitted": len(submitted), "timed_out": len(late)},
            )
            if rnd.kind != "evaluate" and len(submitted) < max(1, quorum if rnd.kind == "train" else 1):
                rnd.status, rnd.closed_at = Round.Status.FAILED, now
                rnd.save(update_fields=["status", "closed_at"])
                finish_locked(fed, Federation.Status.FAILED, f"round {rnd.number}: quorum not reached "
                              f"({len(submitted)} of {quorum} updates by the deadline)")  # fmt: skip
                return "failed"
        for s in late:
            append_event(fed, "site", {"state": "timed_out"}, round_number=rnd.number, site_id=s.site_id)
        if rnd.kind == "statistics":
            return _close_statistics(fed, fspec, rnd, submitted)
        if rnd.kind == "train":
            return _close_train(fed, fspec, rnd, slots, submitted, sites)
        return _close_evaluation(fed, fspec, rnd, slots, sites)


def _store_round_model(fed: Federation, rnd: Round, state: dict[str, torch.Tensor], strategy_state: Any) -> None:
    name, key, digest, _ = storage.store_tensors(
        fed.tenant_id, fed.pk, f"r{rnd.number}/model", state, {"federation": str(fed.pk), "round": str(rnd.number)}
    )
    rnd.model_storage_name, rnd.model_key, rnd.model_digest = name, key, digest
    if strategy_state is not None:
        from apps.datasets.storage import EncryptedUpload

        buf = io.BytesIO()
        torch.save(strategy_state, buf)
        up = EncryptedUpload(fed.tenant_id, storage.KIND, storage.object_id(fed.pk, f"r{rnd.number}/strategy"))
        up.write(buf.getvalue())
        stored = up.finish()
        rnd.strategy_storage_name, rnd.strategy_key = stored.name, stored.key


def _close_statistics(fed: Federation, fspec: FederationSpec, rnd: Round, submitted: list[SiteRound]) -> str:
    from workers.federated.rounds import initial_state
    from workers.federated.stats import merge_round_0
    from workers.training.data import DataError

    stats = [s.statistics for s in submitted]
    try:
        encoders = merge_round_0(stats, fspec.train)
    except DataError as exc:  # the sites' data cannot make one model (e.g. notes that share no word)
        finish_locked_audited(fed, Federation.Status.FAILED, f"round 0: {exc}")
        return "failed"
    state = initial_state(fspec, encoders)
    with audited_change():
        _store_round_model(fed, rnd, state, None)
        rnd.status, rnd.closed_at, rnd.participants = (
            Round.Status.CLOSED,
            timezone.now(),
            [s.site_id for s in submitted],
        )
        rnd.save()
        fed.encoders = encoders
        fed.save(update_fields=["encoders"])
        audit_record(
            action="federation.encoders_merged",
            tenant=fed.tenant_id,
            target=fed,
            details={"round": 0, "sites": len(stats), "model_digest": rnd.model_digest},
        )
    append_event(
        fed, "round", {"status": "closed", "kind": "statistics", "model_digest": rnd.model_digest}, round_number=0
    )
    open_round(fed, 1, "train")
    return "closed"


def weighted_metrics(pairs: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    from workers.federated.rounds import weighted_global

    return weighted_global({i: (m, n) for i, (m, n) in enumerate(pairs) if m and n})


def _close_train(
    fed: Federation,
    fspec: FederationSpec,
    rnd: Round,
    slots: list[SiteRound],
    submitted: list[SiteRound],
    sites: dict[int, FederationSite],
) -> str:
    from apps.vault.models import DataKey
    from workers.federated.rounds import aggregate_round, central_seed
    from workers.federated.strategies import make_strategy

    started = time.monotonic()
    base_round = Round.objects.get(federation=fed, number=rnd.number - 1)
    base = load_round_model(fed, base_round)
    strategy = make_strategy(fspec.strategy.name, fspec.strategy.params)
    if base_round.strategy_storage_name and base_round.strategy_key_id:
        raw = storage.load_bytes(
            fed.tenant_id, fed.pk, f"r{base_round.number}/strategy", base_round.strategy_storage_name,
            DataKey.objects.get(pk=base_round.strategy_key_id),
        )  # fmt: skip
        strategy.load_state_dict(torch.load(io.BytesIO(raw), weights_only=True))
    ordered = sorted(submitted, key=lambda s: s.site_id)  # participant order: part of FL-6

    def updates() -> Any:
        for s in ordered:
            assert s.update_key_id is not None, f"slot {s.pk} was submitted without a key"
            key = DataKey.objects.get(pk=s.update_key_id)
            # Yielded without a local name: the previous update is freed while the next one loads.
            yield (
                storage.load_tensors(fed.tenant_id, fed.pk, f"r{rnd.number}/s{s.site_id}", s.update_storage_name, key),
                int(s.n_examples or 0),
            )

    selected_trainers = sum(1 for s in slots if sites[s.site_id].role == FederationSite.Role.TRAIN)
    new_state = aggregate_round(
        fspec, strategy, base, updates(),
        central_noise_seed=central_seed(bytes.fromhex(fed.seed_secret), fed.pk, rnd.number), selected=selected_trainers,
    )  # fmt: skip
    fault_point("aggregate")
    # The training sites' only: evaluation-only sites and the central set are reported apart (as in
    # the final result), so "best" compares like with like across rounds and the final evaluation.
    metrics = weighted_metrics(
        [(s.eval_metrics, int(s.n_eval or 0)) for s in slots
         if s.eval_metrics and sites[s.site_id].role == FederationSite.Role.TRAIN]
    )  # fmt: skip
    central = _central_metrics(slots, sites)
    if fspec.dp.mode == "central":  # each participant's site-level ε, composed over its rounds so far
        _central_epsilons(fed, fspec, rnd, ordered)
    eps = [s.epsilon for s in ordered if s.epsilon is not None]
    with audited_change():
        _store_round_model(fed, rnd, new_state, strategy.state_dict())
        rnd.status, rnd.closed_at = Round.Status.CLOSED, timezone.now()
        rnd.participants = [s.site_id for s in ordered]
        rnd.metrics = metrics  # the base model's, over the sites that evaluated it
        rnd.central_metrics = central  # the base model's, on the coordinator's central set
        rnd.epsilon = max(eps) if eps else None
        rnd.seconds = round(time.monotonic() - started, 3)
        rnd.save()
        audit_record(
            action="federation.round_closed",
            tenant=fed.tenant_id,
            target=rnd,
            details={"round": rnd.number, "participants": [sites[s.site_id].label for s in ordered],
                     "model_digest": rnd.model_digest, "base_digest": rnd.base_digest},
        )  # fmt: skip
        for s in ordered:
            site = sites[s.site_id]
            if site.tenant_id != fed.tenant_id:
                audit_record(
                    action="federation.update_aggregated",
                    tenant=site.tenant_id,
                    target=site,
                    details={"federation": fed.pk, "round": rnd.number, "update_digest": s.update_digest},
                )
    append_event(
        fed,
        "round",
        {"status": "closed", "kind": "train", "participants": [sites[s.site_id].label for s in ordered],
         "metrics": metrics, "model_digest": rnd.model_digest, "epsilon": rnd.epsilon},
        round_number=rnd.number,
    )  # fmt: skip
    next_kind = "train" if rnd.number < fspec.rounds else "evaluate"
    open_round(fed, rnd.number + 1, next_kind)
    return "closed"


def _central_epsilons(fed: Federation, fspec: FederationSpec, rnd: Round, ordered: list[SiteRound]) -> None:
    from workers.federated.spec import central_epsilon

    earlier = dict.fromkeys((s.site_id for s in ordered), 0)
    for r in Round.objects.filter(federation=fed, kind="train", status=Round.Status.CLOSED, number__lt=rnd.number):
        for site_id in r.participants:
            if site_id in earlier:
                earlier[site_id] += 1
    for s in ordered:
        s.epsilon = central_epsilon(fspec, earlier[s.site_id] + 1)
        SiteRound.objects.filter(pk=s.pk).update(epsilon=s.epsilon)


def _close_evaluation(
    fed: Federation, fspec: FederationSpec, rnd: Round, slots: list[SiteRound], sites: dict[int, FederationSite]
) -> str:
    evaluated = [s for s in slots if s.state == SiteRound.State.SUBMITTED and s.eval_metrics]
    train_sites = [s for s in evaluated if sites[s.site_id].role == FederationSite.Role.TRAIN]
    eval_only = [s for s in evaluated if sites[s.site_id].role == FederationSite.Role.EVALUATE]
    final = weighted_metrics([(s.eval_metrics, int(s.n_eval or 0)) for s in train_sites])
    final_central = _central_metrics(slots, sites)
    history = [
        {"round": r.number, "metrics": r.metrics, "participants": len(r.participants), "seconds": r.seconds,
         "epsilon": r.epsilon, "model_digest": r.model_digest,
         **({"central_metrics": r.central_metrics} if fspec.evaluation.central else {})}
        for r in Round.objects.filter(federation=fed, kind="train").order_by("number")
    ]  # fmt: skip
    base_round = Round.objects.get(federation=fed, number=rnd.number - 1)
    result = {
        "final_metrics": final,
        "per_site": {sites[s.site_id].label: s.eval_metrics for s in train_sites},
        "evaluation_only": {
            "metrics": weighted_metrics([(s.eval_metrics, int(s.n_eval or 0)) for s in eval_only]),
            "per_site": {sites[s.site_id].label: s.eval_metrics for s in eval_only},
        },
        "rounds": history,
        "model_digest": base_round.model_digest,
        # The global model against each training site's local-only one (evaluation.local_baseline).
        "local_only": {
            sites[s.site_id].label: s.train_metrics["local_only"]
            for s in train_sites
            if isinstance(s.train_metrics, dict) and "local_only" in s.train_metrics
        },
        "final_round": base_round.number,
    }
    complete = False
    if fspec.evaluation.central:  # the coordinator's own set: every model's score on all its rows
        central_site = next((s for s in sites.values() if s.role == FederationSite.Role.CENTRAL), None)
        central_slot = next((s for s in evaluated if _is_central(sites, s)), None)
        result["central"] = {
            "site": central_site.label if central_site else None,
            "metrics": final_central,
            "n": int(central_slot.n_eval or 0) if central_slot else 0,
            # It scores every model only while it stays in (a dropped or failed central site leaves
            # later models unscored): if not, "best" and the registry's figures are the sites'.
            "complete": (complete := _central_complete(fed, fspec, final_central)),
        }
    on_central = bool(fspec.evaluation.central and complete)
    chosen = _registered_round(fspec, base_round, final_central if on_central else final, on_central=on_central)
    result["registered_round"] = chosen.number
    result["registered_metrics_on"] = "central" if on_central else "sites"
    with audited_change():
        rnd.status, rnd.closed_at, rnd.metrics = Round.Status.CLOSED, timezone.now(), final
        rnd.central_metrics = final_central
        rnd.participants = [s.site_id for s in evaluated]
        rnd.save()
        if fspec.evaluation.register != "none":
            chosen_metrics = (final_central if on_central else final) if chosen is base_round else None
            fed.model_version = _register_model(fed, fspec, chosen, chosen_metrics, on_central=on_central)
            result["model_version"] = fed.model_version.pk
        fed.result = result
        fed.save(update_fields=["result", "model_version"])
        audit_record(action="federation.evaluated", tenant=fed.tenant_id, target=fed,
                     details={"model_digest": base_round.model_digest, "sites": len(evaluated)})  # fmt: skip
        finish_locked(fed, Federation.Status.COMPLETED, "all rounds done")
    return "completed"


def _central_complete(fed: Federation, fspec: FederationSpec, final_central: dict[str, float]) -> bool:
    """Every model the registry could take (rounds 1..R) was scored on the central set."""
    metric = fspec.evaluation.best_metric if fspec.evaluation.register == "best" else "loss"
    if final_central.get(metric) is None:
        return False
    later = Round.objects.filter(federation=fed, kind="train", number__gt=1)
    return all((r.central_metrics or {}).get(metric) is not None for r in later)


def _registered_round(
    fspec: FederationSpec, final_round: Round, final_metrics: dict[str, float], *, on_central: bool = False
) -> Round:
    """The round whose model enters the registry: the last one, or with ``evaluation.register:
    "best"`` the one whose model scored best on ``evaluation.best_metric`` on the central set
    (``on_central``: it scored every candidate) or else at the sites (round r's metrics are its *base* model's, i.e.
    round r-1's; the last model's are the final evaluation's, ``final_metrics``)."""
    if fspec.evaluation.register != "best":
        return final_round
    metric = fspec.evaluation.best_metric
    lower = metric in LOWER_IS_BETTER
    scored: list[tuple[float, int]] = []  # (score, round number of the model)
    for r in Round.objects.filter(federation_id=final_round.federation_id, kind="train").order_by("number"):
        value = ((r.central_metrics if on_central else r.metrics) or {}).get(metric)
        if r.number > 1 and isinstance(value, int | float) and math.isfinite(value):
            scored.append((float(value), r.number - 1))
    if isinstance(final_metrics.get(metric), int | float) and math.isfinite(final_metrics[metric]):
        scored.append((float(final_metrics[metric]), final_round.number))
    if not scored:
        return final_round
    # Best score; ties go to the later round (more training for the same score).
    best = min(scored, key=lambda p: (p[0] if lower else -p[0], -p[1]))
    return Round.objects.get(federation_id=final_round.federation_id, number=best[1])


LOWER_IS_BETTER = frozenset({"loss", "mse", "rmse", "mae", "log_loss"})


def _register_model(
    fed: Federation, fspec: FederationSpec, rnd: Round, final_metrics: dict[str, float] | None, *, on_central: bool
) -> Any:
    """The chosen round's global model in the coordinator's registry, with the lineage of every
    dataset version that trained or evaluated it."""
    from apps.training.services import register_federation_model
    from workers.federated.rounds import model_input_info

    state = load_round_model(fed, rnd)
    trained: dict[int, int] = {}
    for r in Round.objects.filter(federation=fed, kind="train", number__lte=rnd.number):
        for site_id in r.participants:
            trained[site_id] = trained.get(site_id, 0) + 1
    eps: dict[int, float] = {}
    for site_id, e in SiteRound.objects.filter(
        round__federation=fed, round__number__lte=rnd.number, epsilon__isnull=False
    ).values_list("site_id", "epsilon"):
        eps[site_id] = max(eps.get(site_id, 0.0), float(e or 0.0))
    datasets = [
        {
            "site": s.label,
            "role": s.role,
            "dataset_id": s.dataset_id,
            "dataset_owner_tenant_id": s.tenant_id,
            "dataset_version_id": s.version_id,
            "dataset_content_sha256": s.version_sha256,
            "rounds_trained": trained.get(s.pk, 0),
            "epsilon": eps.get(s.pk),
        }
        for s in FederationSite.all_tenants.filter(federation=fed, version__isnull=False).order_by("id")
    ]
    metrics = final_metrics if final_metrics is not None else _next_round_metrics(fed, rnd, on_central=on_central)
    label = fed.encoders.get("label") or {}
    problem = "classification" if label.get("kind") == "classes" else "regression"
    return register_federation_model(
        tenant_id=fed.tenant_id,
        federation_id=fed.pk,
        name=fed.name,
        spec=fspec.train.to_dict(),
        state=state,
        metrics=metrics,
        lineage={
            "spec_hash": fed.spec_hash,
            "federation_spec": fed.spec,
            "strategy": fspec.strategy.name,
            "round": rnd.number,
            "rounds": fspec.rounds,
            "model_digest": rnd.model_digest,
            "metrics_on": "central" if on_central else "sites",  # what ``metrics`` were measured on
            "datasets": datasets,
        },
        encoders=dict(fed.encoders),
        input_info={**model_input_info(fed.encoders), "kind": fed.encoders.get("kind", "tabular"), "problem": problem},
    )


def _next_round_metrics(fed: Federation, rnd: Round, *, on_central: bool = False) -> dict[str, float]:
    """Round r's model was evaluated at the sites (and on the central set) as round r+1's base:
    the registry records the central set's metrics (``on_central``) or the sites'."""
    nxt = Round.objects.filter(federation=fed, number=rnd.number + 1).first()
    if nxt is None:
        return {}
    return dict((nxt.central_metrics if on_central else nxt.metrics) or {})


def _is_central(sites: dict[int, FederationSite], slot: SiteRound) -> bool:
    return sites[slot.site_id].role == FederationSite.Role.CENTRAL


def _central_metrics(slots: list[SiteRound], sites: dict[int, FederationSite]) -> dict[str, float]:
    """The central set's metrics of the round's base model ({} without one, or if it failed)."""
    for s in slots:
        if _is_central(sites, s) and s.state == SiteRound.State.SUBMITTED and s.eval_metrics:
            return dict(s.eval_metrics)
    return {}


def all_rows(prepared: Any) -> Any:
    """``prepared`` with every row as the evaluation split (a central set is held out whole)."""
    return replace(
        prepared,
        x_val=torch.cat([prepared.x_train, prepared.x_val]),
        y_val=torch.cat([prepared.y_train, prepared.y_val]),
        val_index=[*prepared.train_index, *prepared.val_index],
    )


# --- finishing -------------------------------------------------------------------------------------


def finish(tenant_id: int, federation_id: int, status: str, reason: str) -> None:
    with tenant_scope(tenant_id):
        fed = Federation.objects.select_for_update().get(pk=federation_id)
        if fed.status in Federation.TERMINAL:
            return
        with audited_change():
            finish_locked(fed, status, reason)


def finish_locked_audited(fed: Federation, status: str, reason: str) -> None:
    """:func:`finish_locked` in its own audited change (the caller holds the row lock)."""
    with audited_change():
        finish_locked(fed, status, reason)


def finish_locked(fed: Federation, status: str, reason: str) -> None:
    """End the federation (caller holds its row, in its scope, inside an audited change): open
    slots are excluded, and every site's budget reservation is settled: the spend of the updates
    that left the site is committed, the rest released."""
    now = timezone.now()
    Round.objects.filter(federation=fed, status=Round.Status.OPEN).update(
        status=Round.Status.CLOSED if status == Federation.Status.COMPLETED else Round.Status.FAILED, closed_at=now
    )
    SiteRound.objects.filter(round__federation=fed).exclude(state__in=SiteRound.DONE).update(
        state=SiteRound.State.EXCLUDED, reason=f"federation {status}", finished_at=now, lease_until=None
    )
    Federation.objects.filter(pk=fed.pk).update(status=status, status_reason=reason[:300], finished_at=now)
    fed.status, fed.status_reason = status, reason[:300]
    settled = _settle_budgets(fed)
    prepared_store.purge(fed)  # what was derived from the sites' rows goes with the federation
    audit_record(
        action=f"federation.{status}", tenant=fed.tenant_id, target=fed, details={"reason": reason[:200], **settled}
    )
    owners: dict[int, list[FederationSite]] = {}
    for site in FederationSite.all_tenants.filter(federation=fed).exclude(tenant_id=fed.tenant_id).order_by("id"):
        owners.setdefault(site.tenant_id, []).append(site)
    for owner_id, owned in owners.items():  # one event in each other owner's chain
        audit_record(action=f"federation.{status}", tenant=owner_id, target=owned[0],
                     details={"federation": fed.pk, "sites": [s.label for s in owned]})  # fmt: skip
    append_event(fed, "state", {"status": status, "reason": reason[:300]})


def _settle_budgets(fed: Federation) -> dict[str, int]:
    from apps.datasets.models import BudgetReservation
    from apps.datasets.services import budget_settle

    committed = released = 0
    coordinator = Tenant(pk=fed.tenant_id)
    for site in FederationSite.all_tenants.filter(federation=fed, reservation__isnull=False):
        assert site.reservation_id is not None
        res = BudgetReservation.all_tenants.filter(pk=site.reservation_id).first()
        if res is None or res.state != BudgetReservation.State.RESERVED:
            continue
        # Every update the site computed left it (a rejected one was read by the validator too);
        # each slot's ε is already composed over the site's earlier rounds, so the largest is the spend.
        spent = list(
            SiteRound.objects.filter(round__federation=fed, site=site, epsilon__isnull=False)
            .order_by("round__number")
            .values_list("epsilon", flat=True)
        )
        if spent:
            eps = min(Decimal(str(round(max(e or 0.0 for e in spent), 6))), res.epsilon)
            budget_settle(consumer=coordinator, reservation=res, commit=True, epsilon_spent=eps)
            committed += 1
        else:
            budget_settle(consumer=coordinator, reservation=res, commit=False)
            released += 1
    return {"budget_committed": committed, "budget_released": released}


# --- the sweep -------------------------------------------------------------------------------------


def sweep() -> dict[str, int]:
    """Beat: advance rounds past their deadline; re-send slots whose worker vanished (lease
    expired) or whose message was lost (selected for longer than a lease)."""
    with platform_scope():
        running = list(Federation.all_tenants.filter(status=Federation.Status.RUNNING).values_list("pk", "tenant_id"))
    advanced = resent = 0
    now = timezone.now()
    stale = now - timedelta(seconds=lease_seconds())
    for fed_id, tenant_id in running:
        with tenant_scope(tenant_id):
            rnd = Round.objects.filter(federation_id=fed_id, status=Round.Status.OPEN).order_by("-number").first()
            if rnd is None:
                continue
            lost = list(
                SiteRound.objects.filter(round=rnd, admitted_at__isnull=False).filter(
                    Q(state=SiteRound.State.TRAINING, lease_until__lt=now)
                    | Q(state=SiteRound.State.SELECTED, enqueued_at__lt=stale)
                )
            )
            for slot in lost:
                SiteRound.objects.filter(pk=slot.pk).update(enqueued_at=now)
                send(SITE_TASK, args=(tenant_id, slot.pk), queue=slot.queue)
                resent += 1
            # Past the deadline, or every slot done while no advance ran (its message or worker was lost).
            due = (rnd.deadline is not None and rnd.deadline <= now) or not SiteRound.objects.filter(round=rnd).exclude(
                state__in=SiteRound.DONE
            ).exists()
        if due:
            send(ADVANCE_TASK, args=(tenant_id, fed_id))
            advanced += 1
    admitted = len(admit_sites().admitted) if running else 0
    return {"running": len(running), "advanced": advanced, "resent": resent, "admitted": admitted}
