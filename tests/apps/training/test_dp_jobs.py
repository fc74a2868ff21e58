"""DP-SGD for ordinary training jobs (``spec.privacy``): the dataset ledger reserves the projected
ε at creation (or the job is a 422 and nothing is created), the job trains with Opacus' per-sample
clipping and Poisson sampling, and its end commits the composed ε, recomputed here with Opacus."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from opacus.accountants import RDPAccountant

from apps.datasets.models import BudgetReservation
from apps.tenancy.scope import tenant_scope
from apps.training import services
from apps.training.models import TrainingJob
from tests.apps.training.test_jobs import world  # noqa: F401  (the fixture)
from workers.training.privacy import job_dp_config
from workers.training.spec import TrainSpec

pytestmark = pytest.mark.django_db

DP_SPEC: dict[str, Any] = {
    "model": {"name": "logistic_regression", "params": {}},
    "optimizer": {"name": "sgd", "lr": 0.1},
    "epochs": 2,
    "batch_size": 64,
    "seed": 3,
    "privacy": {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": 1e-4},
}


def _budget(w: dict[str, Any], epsilon: str = "8") -> None:
    r = w["owner"].put(f"/api/v1/tenants/{w['tenant'].slug}/datasets/{w['ds']}/budget/",
                       {"epsilon": epsilon, "delta": "0.01"}, format="json")  # fmt: skip
    assert r.status_code == 200, r.content


def _post(w: dict[str, Any], spec: dict[str, Any]) -> Any:
    return w["owner"].post(f"/api/v1/tenants/{w['tenant'].slug}/jobs/",
                           {"name": "dp", "dataset_version": w["deid"]["id"], "spec": spec}, format="json")  # fmt: skip


def _reservation(job_id: int, tenant_id: int) -> BudgetReservation:
    with tenant_scope(tenant_id):
        job = TrainingJob.objects.get(pk=job_id)
        assert job.budget_reservation_id is not None, job.spec
        return BudgetReservation.all_tenants.get(pk=job.budget_reservation_id)


def test_dp_job_reserves_trains_and_commits_the_composed_epsilon(world: dict[str, Any]) -> None:  # noqa: F811
    _budget(world)
    r = _post(world, DP_SPEC)
    assert r.status_code == 201, r.content
    tid, job_id = world["tenant"].pk, r.json()["id"]
    res = _reservation(job_id, tid)
    rows = int(world["deid"]["rows"])
    config = job_dp_config(TrainSpec.from_dict(DP_SPEC), rows)
    assert res.state == "reserved" and float(res.epsilon) == pytest.approx(config.max_epsilon, abs=1e-6)
    assert services.run_job(tid, job_id) == "succeeded"
    with tenant_scope(tid):
        job = TrainingJob.objects.get(pk=job_id)
    eps = job.result["epsilon"]
    acc = RDPAccountant()  # FL-4 for a job: recomputed from sigma, q and the steps it took
    for _ in range(int(job.result["steps"])):
        acc.step(noise_multiplier=config.noise_multiplier, sample_rate=config.sample_rate)
    assert eps == pytest.approx(acc.get_epsilon(delta=1e-4), rel=0.01)
    assert 0 < eps <= float(res.epsilon) + 1e-6
    res = _reservation(job_id, tid)
    assert res.state == "committed" and res.epsilon_spent == Decimal(str(round(eps, 6)))
    assert job.result["final_metrics"]["val_accuracy"] > 0.7


def test_dp_job_past_the_budget_is_a_422_and_creates_nothing(world: dict[str, Any]) -> None:  # noqa: F811
    _budget(world, epsilon="0.5")
    r = _post(world, DP_SPEC)
    assert r.status_code == 422 and r.json()["error"]["code"] == "budget_exceeded", r.content
    with tenant_scope(world["tenant"].pk):
        assert not TrainingJob.objects.exists()
        assert not BudgetReservation.all_tenants.exists()


def test_dp_job_past_the_default_budgets_delta_is_refused(world: dict[str, Any]) -> None:  # noqa: F811
    """No budget set: the dataset's default (delta 1e-6) cannot cover delta 1e-4."""
    r = _post(world, DP_SPEC)
    assert r.status_code == 422 and r.json()["error"]["code"] == "budget_exceeded", r.content
    assert r.json()["error"]["details"]["delta_requested"] == "0.0001"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"privacy": {**DP_SPEC["privacy"], "delta": 0.5}}, "spec.privacy.delta"),
        ({"privacy": {"max_grad_norm": 1.0}}, "spec.privacy.noise_multiplier"),
        ({"privacy": {**DP_SPEC["privacy"], "noise_multiplier": 0.3}, "epochs": 40}, "spec.privacy.noise_multiplier"),
        ({"privacy": {**DP_SPEC["privacy"], "accountant": "gdp"}}, "spec.privacy.accountant"),
        ({"privacy": {**DP_SPEC["privacy"], "sigma": 1}}, "spec.privacy.sigma"),
        ({"world_size": 2}, "spec.world_size"),
        ({"grad_accum_steps": 2}, "spec.grad_accum_steps"),
        ({"model": {"name": "mlp", "params": {"batch_norm": True}}}, "spec.model"),
        ({"batch_size": 100_000}, "spec.batch_size"),
    ],
)
def test_bad_dp_specs_are_400s_naming_the_field(world: dict[str, Any], change: dict[str, Any], field: str) -> None:  # noqa: F811
    _budget(world)
    r = _post(world, {**DP_SPEC, **change})
    assert r.status_code == 400, r.content
    assert field in r.json()["error"]["fields"], r.json()


def test_cancelling_a_queued_dp_job_releases_its_reservation(world: dict[str, Any]) -> None:  # noqa: F811
    _budget(world)
    job_id = _post(world, DP_SPEC).json()["id"]
    r = world["owner"].delete(f"/api/v1/tenants/{world['tenant'].slug}/jobs/{job_id}/")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.content
    assert _reservation(job_id, world["tenant"].pk).state == "released"


def test_a_dp_job_cancelled_while_training_commits_the_epsilon_of_the_steps_it_took(
    world: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clean stop returns the accountant's ε: that is charged, not the whole reservation."""
    from apps.training.services import runner
    from apps.training.services.sink import DjangoSink

    _budget(world)
    spec = {**DP_SPEC, "epochs": 6}
    tid, job_id = world["tenant"].pk, _post(world, spec).json()["id"]
    reserved = _reservation(job_id, tid).epsilon
    monkeypatch.setattr(runner, "STOP_CHECK_SECONDS", 0.0)  # the cancel is seen at the next step
    real_epoch_end = DjangoSink.on_epoch_end

    def cancel_after_the_first_epoch(self: DjangoSink, epoch: int, metrics: dict[str, float]) -> None:
        real_epoch_end(self, epoch, metrics)
        with tenant_scope(tid):
            TrainingJob.objects.filter(pk=job_id).update(cancel_requested=True)

    monkeypatch.setattr(DjangoSink, "on_epoch_end", cancel_after_the_first_epoch)
    assert services.run_job(tid, job_id) == "cancelled"
    with tenant_scope(tid):
        job = TrainingJob.objects.get(pk=job_id)
    config = job_dp_config(TrainSpec.from_dict(spec), int(world["deid"]["rows"]))
    acc = RDPAccountant()
    for _ in range(int(job.result["steps"])):
        acc.step(noise_multiplier=config.noise_multiplier, sample_rate=config.sample_rate)
    eps = job.result["epsilon"]
    assert eps == pytest.approx(acc.get_epsilon(delta=1e-4), rel=0.01)
    res = _reservation(job_id, tid)
    assert res.state == "committed" and res.epsilon_spent == Decimal(str(round(eps, 6)))
    assert 0 < res.epsilon_spent < reserved  # 1 epoch of 6 was charged, not the whole reservation
