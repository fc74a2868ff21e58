"""FederationSpec: JSON round-trip, hash, and every impossible combination reported at its field path."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from workers.federated import spec as fspec
from workers.federated.spec import (
    DPSpec,
    EvaluationSpec,
    FederationSpec,
    StrategySpec,
    projected_epsilon,
)
from workers.training.spec import EarlyStoppingSpec, OptimizerSpec, SpecError, TrainSpec

ROOT = Path(__file__).resolve().parents[3]


def _errors(spec: FederationSpec, n_sites: int | None = None) -> dict[str, list[str]]:
    try:
        spec.validate(n_sites)
    except SpecError as exc:
        return exc.fields
    return {}


def _full() -> FederationSpec:
    """A spec with every field away from its default (and valid for 40 sites)."""
    return FederationSpec(
        train=TrainSpec(epochs=1, batch_size=16, optimizer=OptimizerSpec(name="sgd", lr=0.05), metrics=("accuracy",)),
        local_steps=50,
        strategy=StrategySpec("fedadam", {"eta": 0.05, "beta_1": 0.8}),
        rounds=20,
        select="fraction",
        fraction=0.5,
        min_participants=20,
        quorum=20,
        round_deadline_seconds=600,
        dp=DPSpec(mode="central", noise_multiplier=1.1, target_epsilon=4.0, delta=1e-3, accountant="prv"),
        update_bound=2.5,
        evaluation=EvaluationSpec(every_rounds=5, metrics=("loss", "accuracy")),
        seed=7,
    )


# --- round trip and hash ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [FederationSpec(), _full()], ids=["defaults", "full"])
def test_json_round_trip(spec: FederationSpec) -> None:
    data = json.loads(json.dumps(spec.to_dict()))
    again = FederationSpec.from_dict(data)
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert again.spec_hash() == spec.spec_hash()


def test_defaults_and_full_spec_validate() -> None:
    FederationSpec().validate()
    FederationSpec().validate(n_sites=2)
    _full().validate()
    _full().validate(n_sites=40)


def test_from_dict_reports_unknown_fields_and_wrong_shapes_with_paths() -> None:
    with pytest.raises(SpecError) as info:
        FederationSpec.from_dict(
            {
                "bogus": 1,
                "train": {"optimizer": {"nope": 1}, "extra": 2},
                "strategy": {"name": "krum", "params": [1]},
                "dp": {"mode": "local", "epsilon": 3},
                "evaluation": {"metrics": "accuracy", "when": "always"},
                "select": "all",
            }
        )
    assert set(info.value.fields) == {
        "bogus",
        "train.optimizer.nope",
        "train.extra",
        "strategy.params",
        "dp.epsilon",
        "evaluation.metrics",
        "evaluation.when",
    }
    with pytest.raises(SpecError) as info:
        FederationSpec.from_dict({"dp": 3, "train": []})
    assert set(info.value.fields) == {"dp", "train"}
    with pytest.raises(SpecError):
        FederationSpec.from_dict([])  # type: ignore[arg-type]


def test_from_dict_gives_one_local_epoch_per_round() -> None:
    assert FederationSpec.from_dict({}).train.epochs == 1
    assert FederationSpec.from_dict({"train": {"batch_size": 8}}).train.epochs == 1
    assert FederationSpec.from_dict({"train": {"epochs": 3}}).train.epochs == 3


def test_hash_is_stable_across_processes() -> None:
    code = (
        "import json,sys; from workers.federated.spec import FederationSpec; "
        "print(FederationSpec.from_dict(json.loads(sys.argv[1])).spec_hash())"
    )
    spec = _full()
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec.to_dict())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == spec.spec_hash()
    assert len(spec.spec_hash()) == 64


MATHS_CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("rounds", {"rounds": 21}),
    ("local_steps", {"local_steps": 51}),
    ("strategy.name", {"strategy": StrategySpec("fedyogi", {"eta": 0.05, "beta_1": 0.8})}),
    ("strategy.params", {"strategy": StrategySpec("fedadam", {"eta": 0.06, "beta_1": 0.8})}),
    ("select", {"select": "all", "fraction": 1.0}),
    ("fraction", {"fraction": 0.6}),
    ("min_participants", {"min_participants": 21}),
    ("quorum", {"quorum": 21}),
    ("dp.noise_multiplier", {"dp": DPSpec(mode="central", noise_multiplier=1.2, target_epsilon=4.0, delta=1e-3)}),
    ("dp.mode", {"dp": DPSpec()}),
    ("update_bound", {"update_bound": 2.0}),
    ("seed", {"seed": 8}),
    ("train.optimizer.lr", {"train": TrainSpec(epochs=1, batch_size=16, optimizer=OptimizerSpec(name="sgd", lr=0.1))}),
    ("train.batch_size", {"train": TrainSpec(epochs=1, batch_size=32, optimizer=OptimizerSpec(name="sgd", lr=0.05))}),
]


@pytest.mark.parametrize(("what", "change"), MATHS_CHANGES, ids=[w for w, _ in MATHS_CHANGES])
def test_hash_changes_with_the_mathematics(what: str, change: dict[str, Any]) -> None:
    assert replace(_full(), **change).spec_hash() != _full().spec_hash(), what


def test_hash_ignores_operational_fields_and_spelling() -> None:
    base = _full()
    same = [
        replace(base, round_deadline_seconds=60),
        replace(base, evaluation=EvaluationSpec(every_rounds=1)),
        replace(base, train=replace(base.train, device="cpu", num_threads=4, log_every_steps=1)),
    ]
    for other in same:
        assert other.spec_hash() == base.spec_hash()
    # Defaults written out, ints for floats: the same trimmed mean and FedAdam.
    tm = FederationSpec(strategy=StrategySpec("trimmed_mean", {}))
    assert replace(tm, strategy=StrategySpec("trimmed_mean", {"beta": 0.2, "f": None})).spec_hash() == tm.spec_hash()
    fa = FederationSpec(strategy=StrategySpec("fedadam", {"eta": 1}))
    assert replace(fa, strategy=StrategySpec("fedadam", {"eta": 1.0})).spec_hash() == fa.spec_hash()
    # DP off: its unused knobs do not count.
    off = FederationSpec()
    assert replace(off, dp=DPSpec(delta=1e-3, accountant="prv")).spec_hash() == off.spec_hash()


# --- impossible combinations -------------------------------------------------------------------------
def _s(**kw: Any) -> FederationSpec:
    return replace(FederationSpec(), **kw)


def _central(**kw: Any) -> DPSpec:
    return DPSpec(mode="central", noise_multiplier=1.0, **kw)


IMPOSSIBLE: list[tuple[str, FederationSpec, int | None, str]] = [
    ("krum n<2f+3", _s(strategy=StrategySpec("krum", {"f": 2})), 6, "strategy.params.f"),
    ("krum via quorum, n unknown", _s(strategy=StrategySpec("krum", {"f": 1}), quorum=4), None, "strategy.params.f"),
    ("multikrum n<2f+3", _s(strategy=StrategySpec("multikrum", {"f": 2, "m": 2})), 6, "strategy.params.f"),
    ("multikrum m>n-f", _s(strategy=StrategySpec("multikrum", {"f": 1, "m": 5})), 5, "strategy.params.m"),
    ("bulyan n<4f+3", _s(strategy=StrategySpec("bulyan", {"f": 1})), 6, "strategy.params.f"),
    (
        "trimmed mean beta<f/n",
        _s(strategy=StrategySpec("trimmed_mean", {"beta": 0.1, "f": 2})),
        10,
        "strategy.params.beta",
    ),
    ("median n<2f+1", _s(strategy=StrategySpec("fedmedian", {"f": 3})), 6, "strategy.params.f"),
    ("quorum > n", _s(quorum=11), 10, "quorum"),
    ("quorum > selected", _s(select="fraction", fraction=0.5, quorum=6), 10, "quorum"),
    ("min_participants > n", _s(min_participants=11), 10, "min_participants"),
    (
        "DP with world_size 2",
        _s(dp=DPSpec(mode="local", noise_multiplier=1.0), train=TrainSpec(epochs=1, world_size=2)),
        None,
        "dp.mode",
    ),
    (
        "DP with 2 nodes",
        _s(dp=DPSpec(mode="local", noise_multiplier=1.0), train=TrainSpec(epochs=1, nnodes=2)),
        None,
        "dp.mode",
    ),
    ("central DP < 20 sites", _s(dp=_central(), update_bound=1.0), 10, "dp.mode"),
    ("central DP quorum < 20", _s(dp=_central(), update_bound=1.0, quorum=10), None, "dp.mode"),
    (
        "central DP + krum",
        _s(dp=_central(), update_bound=1.0, strategy=StrategySpec("krum", {"f": 1})),
        None,
        "dp.mode",
    ),
    ("central DP no bound", _s(dp=_central()), None, "update_bound"),
    ("central DP delta >= 1/n", _s(dp=_central(delta=0.01), update_bound=1.0), 200, "dp.delta"),
    ("local DP without noise", _s(dp=DPSpec(mode="local")), None, "dp.noise_multiplier"),
    ("no DP but noise", _s(dp=DPSpec(noise_multiplier=1.0)), None, "dp.noise_multiplier"),
    ("no DP but budget", _s(dp=DPSpec(target_epsilon=1.0)), None, "dp.target_epsilon"),
    ("rounds x epochs", _s(rounds=1000, train=TrainSpec(epochs=11)), None, "rounds"),
    ("rounds x local_steps", _s(rounds=100, local_steps=20_000), None, "rounds"),
    ("local_steps with epochs", _s(local_steps=10, train=TrainSpec(epochs=2)), None, "train.epochs"),
    ("select all with fraction", _s(fraction=0.5), None, "fraction"),
    (
        "evaluate after the end",
        _s(rounds=3, evaluation=EvaluationSpec(every_rounds=4)),
        None,
        "evaluation.every_rounds",
    ),
    ("register what", _s(evaluation=EvaluationSpec(register="latest")), None, "evaluation.register"),
    ("central not a bool", _s(evaluation=EvaluationSpec(central="yes")), None, "evaluation.central"),  # type: ignore[arg-type]
    (
        "local baseline under local DP",
        _s(evaluation=EvaluationSpec(local_baseline=True), dp=DPSpec(mode="local", noise_multiplier=1.0)),
        None,
        "evaluation.local_baseline",
    ),
    (
        "local baseline not a bool",
        _s(evaluation=EvaluationSpec(local_baseline="yes")),
        None,
        "evaluation.local_baseline",
    ),  # type: ignore[arg-type]
    ("best by unknown metric", _s(evaluation=EvaluationSpec(best_metric="top5")), None, "evaluation.best_metric"),
    (
        "best by an unevaluated metric",
        _s(evaluation=EvaluationSpec(register="best", best_metric="auroc", metrics=("accuracy",))),
        None,
        "evaluation.best_metric",
    ),
    (
        "early stopping in a round",
        _s(train=TrainSpec(epochs=1, early_stopping=EarlyStoppingSpec())),
        None,
        "train.early_stopping",
    ),
    ("two local learning rates", _s(strategy=StrategySpec("fedyogi", {"eta_l": 0.5})), None, "strategy.params.eta_l"),
    ("unknown strategy", _s(strategy=StrategySpec("fedsgd")), None, "strategy.name"),
    ("unknown param", _s(strategy=StrategySpec("krum", {"f": 1, "g": 2})), None, "strategy.params.g"),
    ("param out of range", _s(strategy=StrategySpec("trimmed_mean", {"beta": 0.5})), None, "strategy.params.beta"),
    ("param wrong type", _s(strategy=StrategySpec("krum", {"f": "2"})), None, "strategy.params.f"),
    ("required param null", _s(strategy=StrategySpec("krum", {"f": None})), None, "strategy.params.f"),
    ("params not an object", _s(strategy=StrategySpec("krum", [1])), None, "strategy.params"),  # type: ignore[arg-type]
    ("train's own error", _s(train=TrainSpec(epochs=1, optimizer=OptimizerSpec(lr=-1))), None, "train.optimizer.lr"),
    ("rounds 0", _s(rounds=0), None, "rounds"),
    ("rounds 1001", _s(rounds=1001), None, "rounds"),
    ("rounds bool", _s(rounds=True), None, "rounds"),
    ("fraction 0", _s(select="fraction", fraction=0.0), None, "fraction"),
    ("fraction > 1", _s(select="fraction", fraction=1.5), None, "fraction"),
    ("unknown selection", _s(select="random"), None, "select"),
    ("quorum 0", _s(quorum=0), None, "quorum"),
    ("deadline 0", _s(round_deadline_seconds=0), None, "round_deadline_seconds"),
    ("update bound 0", _s(update_bound=0.0), None, "update_bound"),
    ("update bound NaN", _s(update_bound=float("nan")), None, "update_bound"),
    ("unknown DP mode", _s(dp=DPSpec(mode="global")), None, "dp.mode"),
    ("unknown accountant", _s(dp=DPSpec(accountant="gdp")), None, "dp.accountant"),
    ("non-Poisson sampling", _s(dp=DPSpec(sampling="shuffle")), None, "dp.sampling"),
    ("delta too large", _s(dp=DPSpec(delta=0.5)), None, "dp.delta"),
    ("epsilon 0", _s(dp=DPSpec(mode="local", target_epsilon=0.0)), None, "dp.target_epsilon"),
    ("unknown eval metric", _s(evaluation=EvaluationSpec(metrics=("bleu",))), None, "evaluation.metrics"),
    ("seed negative", _s(seed=-1), None, "seed"),
]


@pytest.mark.parametrize(("case", "spec", "n_sites", "path"), IMPOSSIBLE, ids=[c[0] for c in IMPOSSIBLE])
def test_impossible_combination_names_its_field(
    case: str, spec: FederationSpec, n_sites: int | None, path: str
) -> None:
    errors = _errors(spec, n_sites)
    assert path in errors, (case, errors)
    assert all(isinstance(m, str) and m for m in errors[path])


N_DEPENDENT = [c for c in IMPOSSIBLE if c[2] is not None]


@pytest.mark.parametrize(("case", "spec", "n_sites", "path"), N_DEPENDENT, ids=[c[0] for c in N_DEPENDENT])
def test_n_dependent_checks_wait_for_n(case: str, spec: FederationSpec, n_sites: int | None, path: str) -> None:
    assert path not in _errors(spec, None), case
    assert path in _errors(spec, n_sites), case


def test_fitting_site_counts_pass() -> None:
    _s(strategy=StrategySpec("krum", {"f": 2})).validate(7)
    _s(strategy=StrategySpec("bulyan", {"f": 1})).validate(7)
    _s(strategy=StrategySpec("trimmed_mean", {"beta": 0.2, "f": 2})).validate(10)
    _s(dp=_central(), update_bound=1.0).validate(200)
    _s(select="fraction", fraction=0.5, quorum=5).validate(10)


def test_every_error_is_reported_at_once() -> None:
    spec = FederationSpec(
        train=TrainSpec(epochs=1, world_size=2, batch_size=4, optimizer=OptimizerSpec(lr=0.0)),
        strategy=StrategySpec("krum", {"f": 3}),
        rounds=0,
        fraction=2.0,
        quorum=30,
        dp=DPSpec(mode="central", sampling="fixed"),
        evaluation=EvaluationSpec(metrics=("bleu",)),
    )
    errors = _errors(spec, n_sites=8)
    assert {
        "train.optimizer.lr",
        "strategy.params.f",
        "rounds",
        "fraction",
        "quorum",
        "dp.mode",
        "dp.sampling",
        "dp.noise_multiplier",
        "update_bound",
        "evaluation.metrics",
    } <= set(errors), errors
    assert len(errors["dp.mode"]) == 3  # world_size, not an averaging rule, fewer than 20 updates


def test_validate_refuses_a_bad_site_count() -> None:
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="n_sites"):
            FederationSpec().validate(bad)  # type: ignore[arg-type]


def test_participants_per_round_follows_flower() -> None:
    spec = _s(select="fraction", fraction=0.3, min_participants=2)
    assert [spec.participants_per_round(n) for n in (2, 5, 10, 100)] == [2, 2, 3, 30]
    assert _s().participants_per_round(9) == 9
    assert spec.min_updates_per_round(None) is None
    assert spec.min_updates_per_round(10) == 3
    assert replace(spec, quorum=2).min_updates_per_round(None) == 2


def test_resolved_strategy_params_carry_the_sites_learning_rate() -> None:
    spec = _s(
        strategy=StrategySpec("fedadam", {"eta": 0.05}), train=TrainSpec(epochs=1, optimizer=OptimizerSpec(lr=0.01))
    )
    assert spec.resolved_strategy_params() == {"eta": 0.05, "eta_l": 0.01}
    assert _s(strategy=StrategySpec("krum", {"f": 1})).resolved_strategy_params() == {"f": 1}
    spec.validate()


# --- DP against a site's rows ------------------------------------------------------------------------
def test_check_dp_against_rows() -> None:
    local = _s(dp=DPSpec(mode="local", noise_multiplier=1.0, delta=1e-5), train=TrainSpec(epochs=1, batch_size=64))
    local.check_dp_against_rows(10_000)
    with pytest.raises(SpecError) as info:
        local.check_dp_against_rows(100_000)  # delta = 1/N
    assert set(info.value.fields) == {"dp.delta"}
    with pytest.raises(SpecError) as info:
        local.check_dp_against_rows(50)  # fewer rows than a batch: sampling rate above 1
    assert set(info.value.fields) == {"train.batch_size"}
    loose = replace(local, dp=replace(local.dp, delta=0.01), train=TrainSpec(epochs=1, batch_size=200))
    with pytest.raises(SpecError) as info:
        loose.check_dp_against_rows(150)
    assert set(info.value.fields) == {"dp.delta", "train.batch_size"}
    _s().check_dp_against_rows(1)  # no DP: nothing depends on rows
    # Central DP protects sites, not rows: any row count passes; only the site-level cap is checked.
    _s(dp=DPSpec(mode="central", noise_multiplier=4.0), update_bound=1.0).check_dp_against_rows(1)
    with pytest.raises(SpecError) as central_cap:
        _s(dp=_central(), update_bound=1.0).check_dp_against_rows(1)
    assert "dp.noise_multiplier" in central_cap.value.fields
    with pytest.raises(ValueError, match="n_rows"):
        local.check_dp_against_rows(0)


def test_projected_epsilon_comes_from_opacus_and_the_cap_is_enforced() -> None:
    from opacus.accountants import PRVAccountant, RDPAccountant

    from workers.federated.spec import DEFAULT_EPSILON_CAP, dp_sample_rate, dp_steps_per_round

    spec = _s(dp=DPSpec(mode="local", noise_multiplier=1.0, delta=1e-5))
    q, steps = dp_sample_rate(spec, 1000), spec.rounds * dp_steps_per_round(spec, 1000)
    assert q == spec.train.batch_size / 1000 and steps == spec.rounds * spec.train.epochs * -(-1000 // 32)
    rdp = RDPAccountant()
    rdp.history = [(1.0, q, steps)]
    assert projected_epsilon(spec, n_rows=1000) == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-9)
    prv = replace(spec, dp=replace(spec.dp, accountant="prv"))
    acc = PRVAccountant()
    acc.history = [(1.0, q, steps)]
    assert projected_epsilon(prv, n_rows=1000) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    # A target is met by calibration; a fixed sigma that projects past the cap is refused by name.
    target = _s(dp=DPSpec(mode="local", target_epsilon=2.0, delta=1e-5))
    assert projected_epsilon(target, n_rows=1000) <= 2.0
    target.check_dp_against_rows(1000)
    weak = _s(dp=DPSpec(mode="local", noise_multiplier=0.3, delta=1e-5))
    with pytest.raises(SpecError) as info:
        weak.check_dp_against_rows(1000)
    assert set(info.value.fields) == {"dp.noise_multiplier"}
    with pytest.raises(SpecError) as info:
        _s(dp=DPSpec(mode="local", target_epsilon=DEFAULT_EPSILON_CAP + 1)).validate()
    assert "dp.target_epsilon" in info.value.fields


def test_models_opacus_rejects_are_named_at_create() -> None:
    bn = _s(train=TrainSpec(epochs=1, model=replace(TrainSpec().model, name="mlp", params={"batch_norm": True})),
            dp=DPSpec(mode="local", noise_multiplier=1.0))  # fmt: skip
    with pytest.raises(SpecError) as info:
        bn.validate()
    assert "train.model" in info.value.fields and "BatchNorm" in " ".join(info.value.fields["train.model"])
    replace(bn, dp=DPSpec()).validate()  # without DP the same model is fine
    accum = _s(train=TrainSpec(epochs=1, grad_accum_steps=2), dp=DPSpec(mode="local", noise_multiplier=1.0))
    with pytest.raises(SpecError) as info:
        accum.validate()
    assert "train.grad_accum_steps" in info.value.fields


# --- participant requirements name their parameter ------------------------------------------------
REQUIREMENT_GRID: dict[str, list[dict[str, Any]]] = {
    "fedavg": [{}],
    "fedmedian": [{"f": f} for f in (None, 0, 1, 2, 3)],
    "trimmed_mean": [{"beta": b, "f": f} for b in (0.0, 0.1, 0.2, 0.3, 0.45) for f in (None, 0, 1, 2, 3)],
    "krum": [{"f": f} for f in (0, 1, 2, 3)],
    "multikrum": [{"f": f, "m": m} for f in (0, 1, 2) for m in (None, 1, 3, 5, 8)],
    "bulyan": [{"f": f} for f in (0, 1, 2)],
}


@pytest.mark.parametrize("name", sorted(REQUIREMENT_GRID))
def test_requirement_violations_name_a_parameter_of_the_strategy(name: str) -> None:
    from workers.federated import strategies

    known = {p.name for p in strategies.STRATEGIES[name].PARAMS}
    seen = 0
    for params in REQUIREMENT_GRID[name]:
        for n in range(1, 16):
            messages = strategies.requirements(name, params, n)
            blamed = fspec._requirement_problems(name, params, n)
            assert [m for _, m in blamed] == messages, (name, params, n)
            assert all(param in known for param, _ in blamed), (name, params, n, blamed)
            seen += len(blamed)
    assert seen > 0 or name == "fedavg"  # the grid reaches each rule's violations
