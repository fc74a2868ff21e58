"""The Byzantine attacks of FL-2 (``workers.federated.attacks``) on hand-computed cases."""

from __future__ import annotations

from statistics import NormalDist

import pytest
import torch

from workers.federated import attacks
from workers.federated.strategies import make_strategy


def _delta(value: float) -> dict[str, torch.Tensor]:
    return {
        "w": torch.full((2, 3), value),
        "b": torch.full((3,), value, dtype=torch.float64),
        "steps": torch.tensor(4, dtype=torch.int64),
    }


def test_sign_flip_negates_and_scales_the_floats_only() -> None:
    delta = _delta(0.5)
    out = attacks.sign_flip(delta, scale=4.0)
    assert torch.equal(out["w"], torch.full((2, 3), -2.0))
    assert out["b"].dtype == torch.float64
    assert torch.equal(out["b"], torch.full((3,), -2.0, dtype=torch.float64))
    assert int(out["steps"]) == 4
    assert torch.equal(delta["w"], torch.full((2, 3), 0.5)), "the input is left alone"
    assert torch.equal(attacks.sign_flip(delta)["w"], -delta["w"])
    with pytest.raises(ValueError, match="scale"):
        attacks.sign_flip(delta, scale=0.0)


def test_gaussian_noise_is_seeded_and_has_the_asked_spread() -> None:
    like = {"w": torch.zeros(200, 100), "steps": torch.tensor(4)}
    a = attacks.gaussian_noise(like, sigma=2.0, generator=torch.Generator().manual_seed(7))
    b = attacks.gaussian_noise(like, sigma=2.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a["w"], b["w"])
    assert a["w"].dtype == torch.float32
    assert abs(float(a["w"].std()) - 2.0) < 0.05
    assert abs(float(a["w"].mean())) < 0.05
    assert int(a["steps"]) == 4
    with pytest.raises(ValueError, match="sigma"):
        attacks.gaussian_noise(like, sigma=float("nan"), generator=torch.Generator())


def test_boost_by_the_replacement_factor_replaces_the_fedavg_model() -> None:
    """Bagdasaryan et al.: f colluders boosted by n/f move FedAvg's global onto their own model."""
    n, f = 10, 2
    global_state = {"w": torch.zeros(2, 3), "b": torch.zeros(3, dtype=torch.float64), "steps": torch.tensor(0)}
    target = _delta(0.75)  # the attackers' model, as a delta from the global
    honest = [{"w": torch.zeros(2, 3), "b": torch.zeros(3, dtype=torch.float64), "steps": torch.tensor(4)}] * (n - f)
    factor = attacks.replacement_factor(n, f)
    assert factor == 5.0
    malicious = [attacks.boost(target, factor=factor)] * f
    new = make_strategy("fedavg").aggregate(global_state, [(d, 30) for d in malicious + honest], deltas=True)
    torch.testing.assert_close(new["w"], target["w"])
    torch.testing.assert_close(new["b"], target["b"])
    with pytest.raises(ValueError, match="0 < f <= n"):
        attacks.replacement_factor(3, 0)


def test_flip_labels_maps_y_to_nine_minus_y() -> None:
    labels = torch.arange(10)
    assert attacks.flip_labels(labels, 10).tolist() == list(range(9, -1, -1))
    assert attacks.flip_labels(attacks.flip_labels(labels, 10), 10).tolist() == labels.tolist()
    with pytest.raises(ValueError, match="class indices"):
        attacks.flip_labels(labels.float(), 10)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        attacks.flip_labels(torch.tensor([10]), 10)


@pytest.mark.parametrize(
    ("n", "f", "s"),
    [(10, 2, 4), (20, 4, 7), (50, 12, 14), (5, 2, 1)],
)
def test_alie_z_follows_baruah_et_al(n: int, f: int, s: int) -> None:
    # s = floor(n/2 + 1) - f honest supporters needed; z = Phi^-1((n - s) / n).
    assert attacks.alie_z(n, f) == pytest.approx(NormalDist().inv_cdf((n - s) / n))


def test_alie_z_refuses_degenerate_counts() -> None:
    with pytest.raises(ValueError, match="0 < f < n"):
        attacks.alie_z(10, 0)
    with pytest.raises(ValueError, match="outside"):
        attacks.alie_z(4, 3)  # s = 0: quantile 1


def test_alie_sends_mean_minus_z_std_per_coordinate() -> None:
    honest = [
        {"w": torch.tensor([1.0, 10.0]), "steps": torch.tensor(3)},
        {"w": torch.tensor([2.0, 10.0]), "steps": torch.tensor(3)},
        {"w": torch.tensor([3.0, 10.0]), "steps": torch.tensor(3)},
    ]
    out = attacks.alie(honest, num_participants=5, num_byzantine=2, z=1.5)
    torch.testing.assert_close(out["w"], torch.tensor([2.0 - 1.5 * 1.0, 10.0]))  # sample std of 1,2,3 is 1
    assert int(out["steps"]) == 3
    default = attacks.alie(honest, num_participants=5, num_byzantine=2)
    z = attacks.alie_z(5, 2)
    torch.testing.assert_close(default["w"], torch.tensor([2.0 - z, 10.0]))
    with pytest.raises(ValueError, match="at least 2"):
        attacks.alie(honest[:1], num_participants=5, num_byzantine=2)
