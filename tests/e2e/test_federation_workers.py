"""A three-hospital federation on real Celery workers, PostgreSQL and Redis (WRK-1, WRK-3).

The lab drafts the federation over three label-skewed breast-cancer hospitals, each owner approves
the digest it was shown, the lab starts it from the API, and two worker processes (queues ``fl``
and ``default``) run round 0 (statistics, global encoders) and the training rounds. Mid-run a
worker is killed with SIGKILL while it aggregates (a fault point holds it there); the sweep (the
beat task, run here by the test) sends the round's advance again and a surviving worker closes it.
Then every site-task message is delivered three more times: each is a no-op.

Checked: the federation completes; each (round, site) slot holds at most one update, and each
update was recorded once in the audit trail (0 lost, 0 double-applied); re-aggregating any round
from its stored inputs gives the stored model's hash (FL-6); the global model's accuracy is
compared with centralized training on the union and with the best single site.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from apps.audit.models import AuditEvent
from apps.federation.models import Federation, PreparedCache, Round, SiteRound
from apps.federation.services import rounds as round_services
from apps.tenancy.scope import tenant_scope
from tests.apps.federation.conftest import SPEC, approve_all, consortium, create_federation  # noqa: F401
from tests.conftest import write_report
from tests.processes import child_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ROUNDS = 8
FED_SPEC = {**SPEC, "rounds": ROUNDS, "round_deadline_seconds": 60, "evaluation": {"local_baseline": True}}


def _start_worker(env: dict[str, str], log: Path, name: str, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "fl,default", "--pool", "solo",
         "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
        cwd=ROOT, env={**env, **extra}, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _kill9(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _wait(what: str, check: Callable[[], Any], timeout: float, log: Path, tick: Callable[[], None]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        tick()
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-5000:]}")


def _fed(tenant_id: int, pk: int) -> Federation:
    with tenant_scope(tenant_id):
        return Federation.objects.get(pk=pk)


def _finished(tenant_id: int, pk: int, log: Path, timeout: float, tick: Callable[[], None]) -> Federation:
    """The federation once it reaches a terminal status (``tick`` between looks: the sweep, or nothing)."""
    return _wait(
        f"federation {pk} to finish",
        lambda: (f := _fed(tenant_id, pk)).status in Federation.TERMINAL and f,
        timeout,
        log,
        tick,
    )


@pytest.fixture
def fl_env(settings: Any) -> dict[str, str]:
    settings.COHORT_FL_LEASE_SECONDS = 3
    env = child_env(settings, COHORT_FL_LEASE_SECONDS="3")
    r = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for key in [*r.scan_iter("fl*"), *r.scan_iter("default*")]:
        r.delete(key)
    r.delete("unacked", "unacked_index")
    return env


def test_three_hospitals_on_workers_survive_kill_9_mid_aggregation(
    consortium: dict[str, Any],  # noqa: F811
    fl_env: dict[str, str],
    tmp_path: Path,
) -> None:
    c = consortium
    lab = c["lab"]
    log = tmp_path / "workers.log"
    fed = create_federation(c, spec=FED_SPEC).json()
    approve_all(c, fed["id"], share_metrics=True)
    started = time.monotonic()
    # Worker A pauses 30 s inside round 2's aggregation (after the updates are read, before the
    # new model is written): it is killed there. Worker B runs normally.
    a = _start_worker(fl_env, log, "a", COHORT_FAULT_POINT="aggregate:30")
    procs = [a]
    try:
        r = c["lab_client"].post(f"/api/v1/tenants/{lab.slug}/federations/{fed['id']}/start/")
        assert r.status_code == 200, r.content

        def sweep() -> None:
            round_services.sweep()

        def aggregating() -> bool:  # every round-1 slot is in: A (the only worker) is aggregating
            with tenant_scope(lab.pk):
                rnd = Round.objects.filter(federation_id=fed["id"], number=1).first()
                return bool(rnd) and not SiteRound.objects.filter(round=rnd).exclude(state__in=SiteRound.DONE).exists()

        _wait("round 1's updates", aggregating, 120, log, lambda: None)
        time.sleep(2.0)  # A has taken the advance and sits at the fault point
        with tenant_scope(lab.pk):
            assert Round.objects.get(federation_id=fed["id"], number=1).status == "open"
        _kill9(a)
        killed_at = time.monotonic()
        b = _start_worker(fl_env, log, "b")
        procs.append(b)
        _wait(
            "round 1 to close after the kill",
            lambda: _round_status(lab.pk, fed["id"], 1) == "closed",
            90,
            log,
            sweep,
        )
        recovery = time.monotonic() - killed_at
        done = _finished(lab.pk, fed["id"], log, 300, sweep)
        assert done.status == "completed", (done.status_reason, log.read_text()[-4000:])
        whole = time.monotonic() - started
        with tenant_scope(lab.pk):  # the sites' encrypted prepared tensors went with the federation
            assert not PreparedCache.objects.filter(federation_id=fed["id"]).exists()
        # WRK-3: every site-task message of the last round delivered three more times.
        with tenant_scope(lab.pk):
            slots = list(
                SiteRound.objects.filter(round__federation_id=fed["id"]).values_list("pk", "state", "attempts")
            )
        from apps.common.dispatch import send

        redelivered = 0
        for pk, _state, _attempts in slots[-3:]:
            for _ in range(3):
                send(round_services.SITE_TASK, args=(lab.pk, pk), queue="fl")
                redelivered += 1
        time.sleep(3.0)
        with tenant_scope(lab.pk):
            after = list(
                SiteRound.objects.filter(round__federation_id=fed["id"]).values_list("pk", "state", "attempts")
            )
    finally:
        for p in procs:
            _kill9(p)
    assert after == slots, "a duplicate delivery changed a finished slot"

    with tenant_scope(lab.pk):
        rounds = list(Round.objects.filter(federation_id=fed["id"]).order_by("number"))
        submitted = SiteRound.objects.filter(round__federation_id=fed["id"], round__kind="train", state="submitted")
        n_submitted = submitted.count()
        audited = sum(  # the training rounds' submissions (round 0 and the evaluation round submit too)
            1
            for d in AuditEvent.objects.filter(tenant_id=lab.pk, action="federation.update_submitted").values_list(
                "details", flat=True
            )
            if 1 <= int((json.loads(d) if isinstance(d, str) else d)["round"]) <= ROUNDS
        )
        aggregated_per_round = {r.number: len(r.participants) for r in rounds if r.kind == "train"}
    assert [r.kind for r in rounds] == ["statistics", *["train"] * ROUNDS, "evaluate"]
    assert all(r.status == "closed" and r.model_digest for r in rounds[:-1])
    # 0 lost: every training round aggregated all three hospitals; 0 double-applied: one audited
    # submission per stored update and one update per (round, site) (a unique constraint).
    assert aggregated_per_round == {n: 3 for n in range(1, ROUNDS + 1)}
    assert n_submitted == audited == 3 * ROUNDS

    # FL-6: re-aggregating every round (round 1 is the one interrupted) from its stored inputs gives
    # the stored model's hash (FedAvg carries no server state between rounds).
    equal = [_reaggregate(lab.pk, fed["id"], n) == rounds[n].model_digest for n in range(1, ROUNDS + 1)]
    write_report("FL-6-platform", {"rounds_reaggregated": ROUNDS, "hash_equal": sum(equal)}, all(equal))

    result = done.result
    acc = result["final_metrics"].get("accuracy")
    assert acc is not None and acc > 0.85, result
    # The final report compares each hospital's global-model score with its local-only model's.
    assert set(result["local_only"]) == set(result["per_site"]) == {"site-1", "site-2", "site-3"}
    r = c["lab_client"].get(f"/api/v1/tenants/{lab.slug}/federations/{fed['id']}/")
    assert set(r.json()["result"]["local_only"]) == {"site-1", "site-2", "site-3"}  # all three share metrics
    _check_registered(c, done, rounds[ROUNDS])
    _check_simulation_parity(lab.pk, done, rounds[ROUNDS])
    figures = {
        "lost_updates": 3 * ROUNDS - n_submitted,
        "double_applied": audited - n_submitted,
        "recovery_seconds": round(recovery, 1),
        "whole_run_seconds": round(whole, 1),
        "rounds": ROUNDS,
        "global_accuracy": acc,
        "per_site_accuracy": {k: v.get("accuracy") for k, v in result["per_site"].items()},
        "local_only_accuracy": {k: v.get("accuracy") for k, v in result["local_only"].items()},
    }
    write_report("WRK-1", figures, figures["lost_updates"] == 0 and figures["double_applied"] == 0 and recovery <= 60)
    changed = sum(1 for a, b in zip(slots, after, strict=True) if a != b)
    write_report("WRK-3", {"redeliveries": redelivered, "state_changes": changed}, changed == 0)
    assert recovery <= 60, figures
    assert all(equal), f"FL-6: {sum(equal)} of {ROUNDS} rounds re-aggregate to the stored model's hash"


def _check_registered(c: dict[str, Any], fed: Federation, final_round: Round) -> None:
    """The final global model is in the lab's registry: the same tensors as the last round's model,
    lineage naming every hospital's pinned version, and it serves predictions over the API."""
    import torch

    from apps.federation.models import FederationSite
    from apps.training.models import ModelVersion
    from apps.training.services import weights_bytes
    from workers.training.weights import load_weights

    lab = c["lab"]
    assert fed.result["model_version"] == fed.model_version_id and fed.result["registered_round"] == final_round.number
    with tenant_scope(lab.pk):
        model = ModelVersion.objects.get(pk=fed.model_version_id)
        sites = list(FederationSite.all_tenants.filter(federation=fed).order_by("id"))
        stored = round_services.load_round_model(fed, final_round)
        registered, _meta = load_weights(weights_bytes(model))
    assert model.source == "federation" and model.job_id is None and model.name == fed.name
    assert stored.keys() == registered.keys() and all(torch.equal(stored[k], registered[k]) for k in stored)
    lineage = model.lineage
    assert lineage["federation_id"] == fed.pk and lineage["model_digest"] == final_round.model_digest
    assert lineage["spec_hash"] == fed.spec_hash and lineage["round"] == final_round.number
    assert [(d["dataset_version_id"], d["dataset_content_sha256"]) for d in lineage["datasets"]] == [
        (s.version_id, s.version_sha256) for s in sites
    ]
    assert all(len(s.version_sha256) == 64 for s in sites)
    assert {d["dataset_version_id"] for d in lineage["datasets"]} == {h["version"]["id"] for h in c["hospitals"]}
    assert all(d["rounds_trained"] == final_round.number for d in lineage["datasets"])
    r = c["lab_client"].get(f"/api/v1/tenants/{lab.slug}/models/{model.pk}/")
    assert r.status_code == 200, r.content
    assert r.json()["federation"] == fed.pk and r.json()["job"] is None and r.json()["source"] == "federation"
    row = {col["name"]: 0.0 for col in model.encoders["columns"]}
    r = c["lab_client"].post(f"/api/v1/tenants/{lab.slug}/models/{model.pk}/predict/", {"rows": [row]}, format="json")
    assert r.status_code == 200, r.content
    assert len(r.json()["predictions"]) == 1


def _check_best_registered(lab_id: int, fed: Federation) -> None:
    """``register: best``: the registered model is the round whose model scored the highest accuracy
    at the sites (round r's metrics are round r-1's model's), ties to the later round."""
    from apps.training.models import ModelVersion

    with tenant_scope(lab_id):
        rounds = {r.number: r for r in Round.objects.filter(federation=fed)}
        model = ModelVersion.objects.get(pk=fed.model_version_id)
    scores = {n - 1: r.metrics["accuracy"] for n, r in rounds.items() if r.kind == "train" and n > 1}
    last = max(n for n, r in rounds.items() if r.kind == "train")
    scores[last] = fed.result["final_metrics"]["accuracy"]
    best = max(scores, key=lambda n: (scores[n], n))
    assert fed.result["registered_round"] == best == model.lineage["round"], (scores, fed.result)
    assert model.lineage["model_digest"] == rounds[best].model_digest
    assert all(d["epsilon"] is not None and d["epsilon"] > 0 for d in model.lineage["datasets"])


def _check_simulation_parity(lab_id: int, fed: Federation, final_round: Round) -> None:
    """Simulation mode over the same sites (the hospitals' pinned versions, as the site tasks read
    them), with the federation's secret, id and site ids, reaches ``torch.equal`` weights with the
    hosted run, whose updates crossed processes, storage and a SIGKILL."""
    import torch

    from apps.federation.models import FederationSite
    from workers.federated.simulate import VirtualSite, run
    from workers.federated.spec import FederationSpec

    with tenant_scope(lab_id):
        hosted = round_services.load_round_model(fed, final_round)
        sites = []
        schema = None
        for s in FederationSite.all_tenants.filter(federation=fed).select_related("version").order_by("id"):
            table, schema = round_services._load_table(fed, s)
            sites.append(VirtualSite(s.pk, s.label, table, role=s.role, n_rows=int(s.version.rows or 0)))
    assert schema is not None
    sim = run(FederationSpec.from_dict(fed.spec), sites, schema, secret=bytes.fromhex(fed.seed_secret),
              federation_id=fed.pk)  # fmt: skip
    assert sim.state.keys() == hosted.keys()
    assert all(torch.equal(sim.state[k], hosted[k]) for k in hosted), "simulation and hosted run differ"
    assert sim.encoders == fed.encoders
    if fed.result.get("local_only"):  # the final report's local-only baselines, as the simulator's
        assert fed.result["local_only"] == {
            k: {m: v for m, v in d.items() if v == v} for k, d in sim.local_only.items()
        }


def _round_status(tenant_id: int, fed_id: int, number: int) -> str:
    with tenant_scope(tenant_id):
        return str(Round.objects.filter(federation_id=fed_id, number=number).values_list("status", flat=True).first())


def _reaggregate(tenant_id: int, fed_id: int, number: int) -> str:
    import torch

    from apps.federation.services import storage
    from apps.vault.models import DataKey
    from workers.federated.rounds import aggregate_round
    from workers.federated.spec import FederationSpec
    from workers.federated.strategies import make_strategy
    from workers.training.weights import save_weights

    with tenant_scope(tenant_id):
        fed = Federation.objects.get(pk=fed_id)
        fspec = FederationSpec.from_dict(fed.spec)
        rnd = Round.objects.get(federation=fed, number=number)
        base = round_services.load_round_model(fed, Round.objects.get(federation=fed, number=number - 1))
        updates = []
        for s in SiteRound.objects.filter(round=rnd, state="submitted").order_by("site_id"):
            key = DataKey.objects.get(pk=s.update_key_id)
            updates.append((storage.load_tensors(tenant_id, fed_id, f"r{number}/s{s.site_id}", s.update_storage_name, key),
                            int(s.n_examples)))  # fmt: skip
    strategy = make_strategy(fspec.strategy.name, fspec.strategy.params)
    state = aggregate_round(fspec, strategy, base, updates)
    buf = io.BytesIO()
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    return save_weights(state, buf, {"federation": str(fed_id), "round": str(number)})


def test_local_dp_federation_on_workers_charges_every_ledger(
    consortium: dict[str, Any],  # noqa: F811
    fl_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Local DP on real workers (FL-4): start reserves each dataset's projected ε, every update
    carries its site's composed ε, and at the end each ledger is charged the spend, recomputed
    here with Opacus' RDP accountant from the logged sigma, sampling rate and steps (|Δε| < 1%)."""
    from decimal import Decimal

    from opacus.accountants import RDPAccountant

    from apps.datasets.models import BudgetReservation, DatasetGrant

    c = consortium
    lab = c["lab"]
    log = tmp_path / "workers.log"
    rounds = 3
    spec = {**SPEC, "train": {**SPEC["train"], "epochs": 1}, "local_steps": 8, "rounds": rounds,
            "round_deadline_seconds": 60, "dp": {"mode": "local", "target_epsilon": 3.0, "delta": 1e-5},
            "evaluation": {"register": "best", "best_metric": "accuracy"}}  # fmt: skip
    for h in c["hospitals"]:
        base = f"/api/v1/tenants/{h['tenant'].slug}/datasets/{h['dataset']}/budget/"
        assert h["client"].put(base, {"epsilon": "8", "delta": "0.001"}, format="json").status_code == 200
        with tenant_scope(h["tenant"].pk):
            DatasetGrant.objects.filter(pk=h["grant"]["id"]).update(epsilon_allotment=Decimal("4"),
                                                                    delta_allotment=Decimal("0.001"))  # fmt: skip
    fed = create_federation(c, spec=spec).json()
    approve_all(c, fed["id"], share_metrics=True)
    w = _start_worker(fl_env, log, "dp")
    try:
        r = c["lab_client"].post(f"/api/v1/tenants/{lab.slug}/federations/{fed['id']}/start/")
        assert r.status_code == 200, r.content
        done = _finished(lab.pk, fed["id"], log, 300, round_services.sweep)
    finally:
        _kill9(w)
    assert done.status == "completed", (done.status_reason, log.read_text()[-4000:])
    _check_best_registered(lab.pk, done)
    with tenant_scope(lab.pk):
        last = Round.objects.get(federation=done, number=rounds)
    _check_simulation_parity(lab.pk, done, last)
    worst = 0.0
    charged = 0
    for h in c["hospitals"]:
        with tenant_scope(lab.pk):
            slots = list(SiteRound.objects.filter(round__federation_id=fed["id"], round__kind="train",
                                                  site__dataset_id=h["dataset"]).order_by("round__number"))  # fmt: skip
        eps = [s.epsilon for s in slots]
        assert len(eps) == rounds and all(e is not None for e in eps) and eps == sorted(eps), eps
        # Only the DP accounting came with the updates: no training loss (not covered by ε).
        assert all(s.loss is None and set(s.train_metrics) == {"dp_steps", "dp_noise_multiplier", "dp_sample_rate"}
                   for s in slots), [(s.loss, s.train_metrics) for s in slots]  # fmt: skip
        m = slots[-1].train_metrics
        acc = RDPAccountant()
        for _ in range(int(sum(s.train_metrics["dp_steps"] for s in slots))):
            acc.step(noise_multiplier=m["dp_noise_multiplier"], sample_rate=m["dp_sample_rate"])
        recomputed = acc.get_epsilon(delta=1e-5)
        worst = max(worst, abs(eps[-1] - recomputed) / recomputed)
        with tenant_scope(h["tenant"].pk):
            res = BudgetReservation.objects.get(reference__startswith=f"federation:{fed['id']}:")
        assert res.state == "committed", res.state
        assert float(res.epsilon_spent) == pytest.approx(eps[-1], abs=1e-6) and res.epsilon_spent <= res.epsilon
        charged += 1
    from workers.federated.rounds import initial_state
    from workers.federated.spec import FederationSpec
    from workers.training.models import build
    from workers.training.privacy import model_problems

    fspec = FederationSpec.from_dict(done.spec)
    model = build(fspec.train.model.name, fspec.train.model.params, {"n_features": 30, "n_outputs": 2})
    unsupported = len(model_problems(model))
    assert set(initial_state(fspec, done.encoders)) == set(model.state_dict())
    write_report("FL-4", {"relative_epsilon_error": worst, "ledgers_charged": charged, "delta": fspec.dp.delta,
                          "sampling": fspec.dp.sampling, "unsupported_layers": unsupported},
                 worst < 0.01 and charged == 3 and unsupported == 0)  # fmt: skip
    assert worst < 0.01
    assert done.result["final_metrics"].get("accuracy", 0) > 0.6, done.result
