"""Central DP (DP-FedAvg): the server's noisy mean of clipped site deltas over the selected count,
seeded per round, and the site-level ε composed per participation (recomputed with Opacus)."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from tests.workers.federated.test_simulate import SCHEMA, TRAIN, _table
from workers.federated.rounds import aggregate_round, central_seed
from workers.federated.simulate import SplitSpec, run, split_sites
from workers.federated.spec import FederationSpec, central_epsilon, central_noise_multiplier, projected_epsilon
from workers.federated.strategies import make_strategy
from workers.training.spec import SpecError


def _central(**over: object) -> FederationSpec:
    return FederationSpec.from_dict({
        "train": TRAIN, "rounds": 3, "min_participants": 20, "update_bound": 1.0,
        "dp": {"mode": "central", "noise_multiplier": 1.0, "delta": 1e-3}, **over,
    })  # fmt: skip


def test_noisy_mean_has_the_calibrated_std_and_is_seeded() -> None:
    fspec = _central()
    base = {"w": torch.zeros(200_000), "n": torch.zeros((), dtype=torch.int64)}
    updates = [({"w": torch.full((200_000,), 0.001), "n": torch.tensor(i)}, 10) for i in range(20)]
    out = aggregate_round(fspec, make_strategy("fedavg"), base, updates, central_noise_seed=7, selected=25)
    noise = out["w"].double() - 20 * 0.001 / 25  # the sum over the fixed denominator, then noise
    assert abs(noise.mean().item()) < 5e-4
    assert noise.std().item() == pytest.approx(1.0 * 1.0 / 25, rel=0.01)  # sigma * S / m
    assert out["n"].item() == 19  # integer buffers: the largest, as the mean rules do
    again = aggregate_round(fspec, make_strategy("fedavg"), base, updates, central_noise_seed=7, selected=25)
    assert torch.equal(out["w"], again["w"])  # FL-6: a re-aggregation gives the same model
    other = aggregate_round(fspec, make_strategy("fedavg"), base, updates, central_noise_seed=8, selected=25)
    assert not torch.equal(out["w"], other["w"])
    with pytest.raises(ValueError, match="update_bound"):  # the sensitivity must hold
        aggregate_round(fspec, make_strategy("fedavg"), base, [({"w": torch.ones(200_000), "n": torch.tensor(0)}, 1)],
                        central_noise_seed=7, selected=25)  # fmt: skip


def test_site_level_epsilon_matches_opacus_and_target_is_calibrated() -> None:
    fspec = _central(rounds=10)
    for k in (1, 4, 10):
        acc = RDPAccountant()
        for _ in range(k):
            acc.step(noise_multiplier=1.0, sample_rate=1.0)
        assert central_epsilon(fspec, k) == pytest.approx(acc.get_epsilon(delta=1e-3), rel=1e-9)
    assert projected_epsilon(fspec, n_rows=1) == central_epsilon(fspec, 10)
    target = _central(rounds=10, dp={"mode": "central", "target_epsilon": 6.0, "delta": 1e-3})
    sigma = central_noise_multiplier(target)
    assert central_epsilon(target, 10) <= 6.0 and central_epsilon(target, 10) > 5.5, sigma
    with pytest.raises(SpecError) as exc:  # past the platform cap of 8
        _central(rounds=50, dp={"mode": "central", "noise_multiplier": 0.5, "delta": 1e-3}).check_dp_against_rows(100)
    assert "dp.noise_multiplier" in exc.value.fields


def test_central_dp_is_refused_below_twenty_participants() -> None:
    with pytest.raises(SpecError) as exc:
        _central(min_participants=5).validate(n_sites=5)
    assert "dp.mode" in exc.value.fields


def test_a_central_dp_simulation_over_twenty_sites_composes_each_sites_epsilon() -> None:
    fspec = _central(rounds=3, dp={"mode": "central", "noise_multiplier": 0.8, "delta": 1e-3})
    sites = split_sites(_table(), SCHEMA, SplitSpec(sites=20, seed=3))
    result = run(fspec, sites, SCHEMA, secret=b"c" * 32, federation_id=4)
    for number, r in enumerate(result.rounds, start=1):
        assert len(r["participants"]) == 20
        assert [s["epsilon"] for s in r["sites"]] == [central_epsilon(fspec, number)] * 20
        assert all(s["update_norm"] <= 1.0 + 1e-6 for s in r["sites"])
    assert all(math.isfinite(float(t.abs().max())) for t in result.state.values())
    again = run(fspec, sites, SCHEMA, secret=b"c" * 32, federation_id=4)
    assert again.model_digest == result.model_digest  # the noise is seeded: reproducible
    plain = run(FederationSpec.from_dict({**fspec.to_dict(), "dp": {"mode": "none"}}), sites, SCHEMA,
                secret=b"c" * 32, federation_id=4)  # fmt: skip
    assert plain.model_digest != result.model_digest
    assert central_seed(b"c" * 32, 4, 1) != central_seed(b"c" * 32, 4, 2)
