"""DP-SGD in the engine (Opacus 1.6) and the accountant figures (FL-4 at the engine level).

Checked against Opacus itself, not against numbers written here: the update of one DP step equals
Opacus' ``make_private`` step on the same model, batch and noise; ε is recomputed independently
from the logged (noise multiplier, sample rate, steps) with Opacus' RDP and PRV accountants.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from tests.workers.test_training import Recorder, cancer_table, roundtrip, states_equal, tab_spec
from workers.training.data import Prepared, prepare_tabular
from workers.training.engine import NullSink, TrainState, train
from workers.training.privacy import (
    DPConfig,
    DPSession,
    calibrate,
    compose,
    epsilon_for,
    model_problems,
    sample_rate,
)
from workers.training.spec import OptimizerSpec, SpecError, TrainSpec

DP = DPConfig(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)


def _spec(**kw: Any) -> TrainSpec:
    base: dict[str, Any] = {"epochs": 3, "batch_size": 32, "optimizer": OptimizerSpec("sgd", lr=0.5)}
    base.update(kw)
    return tab_spec(**base)


@pytest.fixture(scope="module")
def cancer_prepared() -> Prepared:
    table, schema = cancer_table()
    return prepare_tabular(table, schema, _spec())


def test_dp_run_reports_the_accountants_epsilon_and_learns(cancer_prepared: Prepared) -> None:
    result = train(_spec(), cancer_prepared, NullSink(), privacy=DP)
    n = len(cancer_prepared.x_train)
    q = 32 / n
    steps = 3 * math.ceil(n / 32)
    assert result.steps == steps
    assert result.privacy_history == [(1.1, q, steps)]
    # FL-4: recomputed with Opacus' own accountant objects, from the logged figures alone.
    from opacus.accountants import PRVAccountant, RDPAccountant

    rdp = RDPAccountant()
    for _ in range(steps):
        rdp.step(noise_multiplier=1.1, sample_rate=q)
    recomputed = rdp.get_epsilon(delta=1e-5)
    assert result.epsilon is not None and abs(result.epsilon - recomputed) / recomputed < 0.01
    prv = PRVAccountant()
    prv.history = [(1.1, q, steps)]
    assert 0 < prv.get_epsilon(delta=1e-5) <= recomputed * 1.01  # PRV is the tighter bound
    assert result.final_metrics["val_accuracy"] > 0.85, result.final_metrics


def test_dp_is_seeded_and_differs_from_the_non_private_run(cancer_prepared: Prepared) -> None:
    a = train(_spec(epochs=1), cancer_prepared, NullSink(), privacy=DP)
    b = train(_spec(epochs=1), cancer_prepared, NullSink(), privacy=DP)
    assert states_equal(a.model_state, b.model_state)  # a retried federation round is bit for bit
    c = train(_spec(epochs=1, seed=8), cancer_prepared, NullSink(), privacy=DP)
    assert not states_equal(a.model_state, c.model_state)
    plain = train(_spec(epochs=1), cancer_prepared, NullSink())
    assert not states_equal(a.model_state, plain.model_state)
    assert plain.epsilon is None and plain.privacy_history == []


def test_dp_resume_is_bit_for_bit_and_composes_epsilon(cancer_prepared: Prepared) -> None:
    spec = _spec(checkpoint_every_steps=7)
    full = train(spec, cancer_prepared, NullSink(), privacy=DP)
    sink = Recorder()
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 20

    part = train(spec, cancer_prepared, sink, should_stop=stop, privacy=DP)
    assert part.status == "stopped" and part.steps == 20
    state = roundtrip(sink.states[-1])
    assert state.privacy_history == [(1.1, pytest.approx(32 / len(cancer_prepared.x_train)), 20)]
    rest = train(spec, cancer_prepared, NullSink(), resume=state, privacy=DP)
    assert rest.steps == full.steps
    assert states_equal(rest.model_state, full.model_state)
    assert rest.epsilon == pytest.approx(full.epsilon, rel=1e-12)


@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook is firing")
def test_one_step_equals_opacus_make_private(cancer_prepared: Prepared) -> None:
    """The engine's DP step against Opacus' PrivacyEngine on the same model, rows and noise: the
    same clipped, noised, averaged gradient, hence the same weights after the step."""
    from opacus import PrivacyEngine

    spec = _spec(epochs=1)
    n = len(cancer_prepared.x_train)
    # The engine's first step, stopped after it.
    calls = 0

    def after_one() -> bool:
        nonlocal calls
        calls += 1
        return calls > 1

    ours = train(spec, cancer_prepared, NullSink(), should_stop=after_one, privacy=DP)
    assert ours.steps == 1
    # The same step by Opacus: same initial model (the engine seeds before building), the same
    # Poisson rows (DPSession.batch_rows(0)) and the same noise generator.
    from workers.training.engine import seed_everything
    from workers.training.models import build

    seed_everything(spec.seed)
    model = build(spec.model.name, spec.model.params, cancer_prepared.input_info)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    session = DPSession(nn.Linear(1, 1), torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1), DP,
                        n_rows=n, batch_size=32, seed=spec.seed, device=torch.device("cpu"))  # fmt: skip
    rows = session.batch_rows(0)
    from workers.training.privacy import _NOISE_STREAM, _generator

    engine = PrivacyEngine(accountant="rdp")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(n, 1)), batch_size=32)
    pmodel, popt, _ = engine.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.1, max_grad_norm=1.0,
        noise_generator=_generator(spec.seed, _NOISE_STREAM, 0, torch.device("cpu")), poisson_sampling=True,
    )  # fmt: skip
    popt.expected_batch_size = 32
    out = pmodel(cancer_prepared.x_train[rows])
    loss = nn.functional.cross_entropy(out, cancer_prepared.y_train[rows], reduction="mean")
    loss.backward()
    popt.step()
    theirs = {k.removeprefix("_module."): v for k, v in pmodel.state_dict().items()}
    assert ours.model_state.keys() == theirs.keys()
    for k, v in ours.model_state.items():
        torch.testing.assert_close(v, theirs[k], rtol=1e-5, atol=1e-6)


def test_budget_cap_stops_before_the_step_that_would_pass_it(cancer_prepared: Prepared) -> None:
    n = len(cancer_prepared.x_train)
    q = sample_rate(32, n)
    cap = epsilon_for([(1.1, q, 10)], 1e-5)
    result = train(_spec(), cancer_prepared, NullSink(), privacy=replace(DP, max_epsilon=cap))
    assert result.status == "budget_exhausted"
    assert result.steps == 10
    assert result.epsilon is not None and result.epsilon <= cap


def test_calibrate_meets_the_target_and_not_much_more() -> None:
    sigma = calibrate(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, steps=400)
    eps = epsilon_for([(sigma, 0.05, 400)], 1e-5)
    assert eps <= 2.0 and eps > 2.0 - 0.05
    assert epsilon_for(compose([], sigma, 0.05, 200), 1e-5) < eps
    assert compose([(sigma, 0.05, 200)], sigma, 0.05, 200) == [(sigma, 0.05, 400)]
    with pytest.raises(ValueError):
        calibrate(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, steps=0)


def test_model_validator_and_bad_combinations_are_named(cancer_prepared: Prepared) -> None:
    assert model_problems(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))) != []
    assert model_problems(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))) == []
    with pytest.raises(SpecError) as exc:
        train(_spec(grad_accum_steps=2), cancer_prepared, NullSink(), privacy=DP)
    assert "grad_accum_steps" in exc.value.fields
    with pytest.raises(ValueError, match="accountant"):
        DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, accountant="gdp")
    with pytest.raises(ValueError, match="delta"):
        DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, delta=1.0)


def test_checkpointed_state_without_privacy_history_still_loads() -> None:
    """Checkpoints written before DP existed have no privacy_history: they load with an empty one."""
    fields = {f: None for f in TrainState.__dataclass_fields__ if f != "privacy_history"}
    assert TrainState.from_dict(fields).privacy_history == []
