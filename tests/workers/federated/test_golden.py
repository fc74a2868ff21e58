"""Our strategies against Flower 1.42's, over 3 rounds (golden vectors from bench/flower/make_golden.py)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

from workers.federated.strategies import make_strategy

GOLDEN = Path(__file__).parent / "golden" / "flower_1_42.json"
TOLERANCE = 1e-6
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@cache
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())


def _tensors(flat: dict[str, list[float]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    shapes = golden()["shapes"]
    # From float64 values, then rounded to the case dtype: what the generator did with numpy.
    return {key: torch.tensor(flat[key], dtype=torch.float64).reshape(shapes[key]).to(dtype) for key in shapes}


def relative_error(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    """Largest per-tensor ``max|actual - expected| / max|expected|`` (robust to near-zero entries)."""
    worst = 0.0
    for key, want in expected.items():
        got = actual[key].to(torch.float64)
        want64 = want.to(torch.float64)
        scale = max(want64.abs().max().item(), 1e-12)
        worst = max(worst, (got - want64).abs().max().item() / scale)
    return worst


def replay(name: str, case: str, *, deltas: bool = False) -> list[float]:
    """Run our strategy through the golden rounds; return the relative error of each round."""
    data = golden()
    entry = data["cases"][case][name]
    dtype = DTYPES[case]
    strategy = make_strategy(name, entry["params"])
    current = _tensors(data["global0"], dtype)
    errors = []
    for round_index, expected_round in enumerate(entry["rounds"]):
        noise = [_tensors(p, dtype) for p in data["noise"][round_index]]
        if deltas:
            # The participants' deltas exactly as they would compute them from their states.
            tensors = [{k: (current[k] + p[k]) - current[k] for k in current} for p in noise]
        else:
            tensors = [{k: current[k] + p[k] for k in current} for p in noise]
        updates = list(zip(tensors, data["num_examples"], strict=True))
        out = strategy.aggregate(current, iter(updates), deltas=deltas)
        assert all(out[k].dtype == dtype and out[k].shape == current[k].shape for k in current)
        expected = _tensors(expected_round["global"], dtype)
        errors.append(relative_error(out, expected))
        current = expected  # next round starts from Flower's model, as the generator's did
    return errors


def test_golden_file_is_flower_1_42_and_small() -> None:
    data = golden()
    assert data["flower_version"].startswith("1.42")
    assert GOLDEN.stat().st_size < 200_000
    assert len(data["noise"]) == 3
    names = {"fedavg", "fedprox", "fedadagrad", "fedadam", "fedyogi", "fedmedian", "trimmed_mean", "krum", "multikrum"}
    assert names | {"bulyan"} == set(data["cases"]["float64"]) == set(data["cases"]["float32"])


@pytest.mark.parametrize("case", sorted(DTYPES))
@pytest.mark.parametrize(
    "name",
    [
        "fedavg",
        "fedprox",
        "fedadagrad",
        "fedadam",
        "fedyogi",
        "fedmedian",
        "trimmed_mean",
        "krum",
        "multikrum",
        "bulyan",
    ],
)
def test_matches_flower(name: str, case: str) -> None:
    errors = replay(name, case)
    assert max(errors) <= TOLERANCE, f"{name}/{case}: relative error per round {errors}"


@pytest.mark.parametrize("name", ["fedavg", "fedadam", "fedmedian", "krum", "bulyan"])
def test_matches_flower_from_deltas(name: str) -> None:
    errors = replay(name, "float64", deltas=True)
    assert max(errors) <= TOLERANCE, f"{name}: relative error per round {errors}"


def test_attacker_moves_fedavg_not_the_robust_rules() -> None:
    """The golden inputs carry a shifted attacker (participant 3): a check the vectors are not trivial."""
    data = golden()
    cases = data["cases"]["float64"]

    def shift(name: str) -> float:
        first = _tensors(cases[name]["rounds"][0]["global"], torch.float64)
        start = _tensors(data["global0"], torch.float64)
        return max((first[k] - start[k]).abs().mean().item() for k in start)

    assert shift("fedavg") > 0.5
    for name in ("fedmedian", "trimmed_mean", "krum", "multikrum", "bulyan"):
        assert shift(name) < 0.1, name
