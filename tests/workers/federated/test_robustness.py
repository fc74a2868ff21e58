"""Byzantine robustness matrix (RELIABILITY FL-2) on scikit-learn's digits. Figures: ``reports/FL-2.json``.

Setup: ``load_digits`` (1,797 8x8 images, 10 classes, shipped with scikit-learn) with a stratified,
seeded 20% held-out test set; features standardised on the training part; the training part dealt
out IID (one seeded permutation, equal shards) to ``n`` sites. The model is a softmax regression
(``linear.weight``, ``linear.bias``) from zeros. Each round every site runs ``LOCAL_STEPS`` full-batch
SGD steps from the global model and submits its delta; the round's deltas go in site order through
the registry's real strategy (``make_strategy(name, params).aggregate(..., deltas=True)``) and the
new global is checked finite, as ``workers.federated.rounds.aggregate_round`` does. All sites are
trained at once as one batch of independent models (one autograd graph whose loss is the sum of the
sites' losses, so each site's gradient is its own), which keeps the matrix within seconds on 2 cores.

The ``f`` Byzantine sites are sites ``0 .. f-1``: the robust rules break ties towards the lower
index, so the attackers get the ties. Attacks (``workers.federated.attacks``): sign flip
(``-SIGN_FLIP_SCALE x`` their own honest delta), Gaussian noise (``N(0, GAUSSIAN_SIGMA^2)`` per
coordinate), scaling (model replacement: a label-flipped delta boosted by ``n/f``), label flip
(training on ``9 - y``), and ALIE (omniscient: ``mean - z std`` of the honest deltas).

Matrix: ``n`` in {5, 10, 20}, every ``f >= 1`` that the registry's ``requirements()`` accepts for
the rule (FedAvg has none; it runs for every ``f < n/2``), all five attacks. Each cell is compared
with the clean run (no attackers) of the same rule with the same parameters. Gates: sign flip,
Gaussian and scaling with ``f/n <= 20%`` cost a robust rule at most 3 points; FedAvg loses at least
20 points to scaling or sign flip at some ``f/n >= 10%`` (otherwise the harness attacks nothing).
ALIE and label flip are reported, not gated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from tests.conftest import write_report
from workers.federated import attacks
from workers.federated.strategies import TrimmedMean, make_strategy, requirements
from workers.federated.validate import check_global_finite, update_l2_norm

N_SITES = (5, 10, 20)
ROUNDS = 12
LOCAL_STEPS = 5
LR = 0.5
TEST_FRACTION = 0.2
SPLIT_SEED = 0
SIGN_FLIP_SCALE = 4.0
GAUSSIAN_SIGMA = 1.0
ROBUST = ("fedmedian", "trimmed_mean", "krum", "multikrum", "bulyan")
AGGREGATORS = ("fedavg", *ROBUST)
GATED_ATTACKS = ("sign_flip", "gaussian", "scaling")
GATED_FRACTION = 0.2  # f/n at or below which the robust gate applies
FEDAVG_FRACTION = 0.1  # f/n at or above which FedAvg must break
MAX_ROBUST_DROP_PP = 3.0
MIN_FEDAVG_DROP_PP = 20.0
CONVERGED_WITHIN_PP = 1.0
NUM_CLASSES = 10
RUNTIME_BUDGET_S = 90.0


@dataclass(frozen=True)
class Federation:
    """``n`` sites' equal IID shards and the shared held-out test set."""

    x_sites: Tensor  # (n, m, 64)
    y_sites: Tensor  # (n, m)
    x_test: Tensor
    y_test: Tensor

    @property
    def num_sites(self) -> int:
        return self.x_sites.shape[0]

    @property
    def per_site(self) -> int:
        return self.x_sites.shape[1]


@dataclass(frozen=True)
class Digits:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    def federation(self, num_sites: int) -> Federation:
        order = torch.randperm(len(self.y_train), generator=torch.Generator().manual_seed(SPLIT_SEED))
        per_site = len(order) // num_sites
        index = order[: per_site * num_sites].view(num_sites, per_site)
        return Federation(self.x_train[index], self.y_train[index], self.x_test, self.y_test)


@pytest.fixture(scope="module")
def digits() -> Digits:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    scaler = StandardScaler().fit(x_train)
    return Digits(
        torch.tensor(scaler.transform(x_train), dtype=torch.float32),
        torch.tensor(y_train, dtype=torch.int64),
        torch.tensor(scaler.transform(x_test), dtype=torch.float32),
        torch.tensor(y_test, dtype=torch.int64),
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Tiny tensors: thread hand-offs cost more than they save, and 1 thread is reproducible.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- the federation ----------------------------------------------------------------------------------
def initial_state(num_features: int) -> dict[str, Tensor]:
    return {
        "linear.weight": torch.zeros(NUM_CLASSES, num_features),
        "linear.bias": torch.zeros(NUM_CLASSES),
    }


def local_deltas(state: Mapping[str, Tensor], x_sites: Tensor, y_sites: Tensor) -> list[dict[str, Tensor]]:
    """Every site's ``LOCAL_STEPS`` full-batch SGD steps from ``state``, as deltas ``local - global``."""
    num_sites = x_sites.shape[0]
    weight_nco = state["linear.weight"].expand(num_sites, -1, -1).clone().requires_grad_(True)
    bias_nc = state["linear.bias"].expand(num_sites, -1).clone().requires_grad_(True)
    optimizer = torch.optim.SGD([weight_nco, bias_nc], lr=LR)
    for _ in range(LOCAL_STEPS):
        optimizer.zero_grad()
        logits_nmc = torch.baddbmm(bias_nc.unsqueeze(1), x_sites, weight_nco.transpose(1, 2))
        loss_nm = F.cross_entropy(logits_nmc.reshape(-1, NUM_CLASSES), y_sites.reshape(-1), reduction="none")
        loss_nm.view(num_sites, -1).mean(dim=1).sum().backward()  # a sum: site i's gradient is its own
        optimizer.step()
    with torch.no_grad():
        d_weight = weight_nco - state["linear.weight"]
        d_bias = bias_nc - state["linear.bias"]
    return [{"linear.weight": d_weight[i].clone(), "linear.bias": d_bias[i].clone()} for i in range(num_sites)]


def accuracy(state: Mapping[str, Tensor], fed: Federation) -> float:
    logits = F.linear(fed.x_test, state["linear.weight"], state["linear.bias"])
    return float((logits.argmax(dim=1) == fed.y_test).double().mean())


def attacked(
    attack: str | None, deltas: list[dict[str, Tensor]], num_byzantine: int, round_number: int
) -> list[dict[str, Tensor]]:
    """The round's submissions: sites ``0 .. f-1`` replace their delta as ``attack`` says."""
    n, f = len(deltas), num_byzantine
    if attack is None or f == 0:
        return deltas
    out = list(deltas)
    if attack == "alie":
        malicious = attacks.alie(deltas[f:], num_participants=n, num_byzantine=f)
        return [malicious] * f + deltas[f:]
    for i in range(f):
        if attack == "sign_flip":
            out[i] = attacks.sign_flip(deltas[i], scale=SIGN_FLIP_SCALE)
        elif attack == "gaussian":
            g = torch.Generator().manual_seed(1_000_003 * round_number + i)
            out[i] = attacks.gaussian_noise(deltas[i], sigma=GAUSSIAN_SIGMA, generator=g)
        elif attack == "scaling":  # deltas[i] was trained on flipped labels (see run)
            out[i] = attacks.boost(deltas[i], factor=attacks.replacement_factor(n, f))
        elif attack != "label_flip":  # label flip: the poisoned delta goes in as is
            raise AssertionError(attack)
    return out


def run(fed: Federation, rule: str, params: Mapping[str, Any], attack: str | None, num_byzantine: int) -> list[float]:
    """Test accuracy of the global model after each of ``ROUNDS`` rounds."""
    strategy = make_strategy(rule, params)
    state = initial_state(fed.x_sites.shape[2])
    labels = fed.y_sites
    if attack in ("label_flip", "scaling") and num_byzantine:
        labels = labels.clone()
        labels[:num_byzantine] = attacks.flip_labels(labels[:num_byzantine], NUM_CLASSES)
    history = []
    for round_number in range(1, ROUNDS + 1):
        deltas = attacked(attack, local_deltas(state, fed.x_sites, labels), num_byzantine, round_number)
        state = strategy.aggregate(state, [(d, fed.per_site) for d in deltas], deltas=True)
        check_global_finite(state)
        history.append(accuracy(state, fed))
    return history


def rule_params(rule: str, n: int, f: int) -> dict[str, Any] | None:
    """The rule's parameters for ``f`` Byzantine among ``n``, or ``None`` where its requirements
    refuse them. FedAvg has no requirement; it is run for every ``f`` with an honest majority."""
    if rule == "fedavg":
        return {} if 2 * f < n else None
    candidates: list[dict[str, Any]] = [{"f": f}]
    if rule == "trimmed_mean":  # the least beta with floor(beta*n) >= f (next float up if f/n rounds down)
        candidates = [{"beta": f / n, "f": f}, {"beta": math.nextafter(f / n, 1.0), "f": f}]
    for params in candidates:
        try:
            if not requirements(rule, params, n):
                return params
        except ValueError:  # beta out of range: f >= n/2
            pass
    return None


def rounds_to(history: Sequence[float], target: float) -> int | None:
    return next((r for r, acc in enumerate(history, start=1) if acc >= target), None)


def pp(x: float) -> float:
    return round(100 * x, 2)


# --- the matrix ----------------------------------------------------------------------------------------
def test_byzantine_robustness_matrix(digits: Digits, one_thread: None) -> None:
    started = time.perf_counter()
    clean: dict[tuple[int, str, str], list[float]] = {}
    clean_rows: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    f_max: dict[str, dict[str, int]] = {}
    honest_rms: dict[str, float] = {}
    for n in N_SITES:
        fed = digits.federation(n)
        first = local_deltas(initial_state(fed.x_sites.shape[2]), fed.x_sites, fed.y_sites)
        honest_rms[str(n)] = (
            sum(update_l2_norm(d) for d in first) / n / math.sqrt(sum(t.numel() for t in first[0].values()))
        )
        f_max[str(n)] = {}
        for rule in AGGREGATORS:
            allowed = [(f, p) for f in range(1, n) if (p := rule_params(rule, n, f)) is not None]
            f_max[str(n)][rule] = max((f for f, _ in allowed), default=0)
            for f, params in allowed:
                key = (n, rule, repr(sorted(params.items())))
                if key not in clean:
                    clean[key] = run(fed, rule, params, None, 0)
                    reference = clean[key][-1] - CONVERGED_WITHIN_PP / 100
                    clean_rows.append(
                        {
                            "n": n,
                            "aggregator": rule,
                            "params": params,
                            "final_accuracy_pct": pp(clean[key][-1]),
                            "rounds_to_converge": rounds_to(clean[key], reference),
                        }
                    )
                baseline = clean[key]
                for attack in attacks.ATTACKS:
                    history = run(fed, rule, params, attack, f)
                    cells.append(
                        {
                            "n": n,
                            "f": f,
                            "f_over_n": round(f / n, 4),
                            "aggregator": rule,
                            "params": params,
                            "attack": attack,
                            "final_accuracy_pct": pp(history[-1]),
                            "clean_final_accuracy_pct": pp(baseline[-1]),
                            "delta_pp": round(pp(history[-1]) - pp(baseline[-1]), 2),
                            "rounds_to_converge": rounds_to(history, baseline[-1] - CONVERGED_WITHIN_PP / 100),
                        }
                    )
    runtime_s = time.perf_counter() - started

    def worst(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        return min(rows, key=lambda c: c["delta_pp"], default=None)

    gated = [
        c
        for c in cells
        if c["aggregator"] in ROBUST and c["attack"] in GATED_ATTACKS and c["f"] / c["n"] <= GATED_FRACTION + 1e-9
    ]
    robust_failures = [c for c in gated if -c["delta_pp"] > MAX_ROBUST_DROP_PP]
    fedavg_attacked = [
        c
        for c in cells
        if c["aggregator"] == "fedavg"
        and c["attack"] in ("scaling", "sign_flip")
        and c["f"] / c["n"] >= FEDAVG_FRACTION - 1e-9
    ]
    fedavg_worst = worst(fedavg_attacked)
    fedavg_drop_pp = -fedavg_worst["delta_pp"] if fedavg_worst else None
    worst_gated = worst(gated)
    worst_gated_n10 = worst([c for c in gated if c["n"] == 10])

    def by_rule(attack: str, n: int | None = None) -> dict[str, Any]:
        """Per rule: the worst delta over f (and the cell it came from) for ``attack``."""
        out: dict[str, Any] = {}
        for rule in AGGREGATORS:
            cell = worst(
                [c for c in cells if c["attack"] == attack and c["aggregator"] == rule and n in (None, c["n"])]
            )
            if cell is not None:
                out[rule] = {k: cell[k] for k in ("n", "f", "final_accuracy_pct", "delta_pp", "rounds_to_converge")}
        return out

    passed = bool(gated) and not robust_failures and fedavg_drop_pp is not None and fedavg_drop_pp >= MIN_FEDAVG_DROP_PP
    figures: dict[str, Any] = {
        "summary": {
            "worst_robust_delta_pp_at_f_over_n_le_20pct": worst_gated["delta_pp"] if worst_gated else None,
            "worst_robust_cell": worst_gated,
            "worst_robust_delta_pp_n10": worst_gated_n10["delta_pp"] if worst_gated_n10 else None,
            "robust_cells_gated": len(gated),
            "robust_cells_over_3pp": robust_failures,
            "fedavg_drop_pp": fedavg_drop_pp,
            "fedavg_worst_cell": fedavg_worst,
            "fedavg_drop_pp_n10": {f"{c['attack']}_f{c['f']}": -c["delta_pp"] for c in fedavg_attacked if c["n"] == 10},
            "alie_worst_by_rule": by_rule("alie"),
            "alie_worst_by_rule_n10": by_rule("alie", 10),
            "alie_z": {f"n{n}_f{f}": round(attacks.alie_z(n, f), 4) for n in N_SITES for f in range(1, (n + 1) // 2)},
            "label_flip_worst_by_rule": by_rule("label_flip"),
            "runtime_s": round(runtime_s, 2),
            "cells": len(cells),
            "clean_runs": len(clean_rows),
            "f_max": f_max,
        },
        "setup": {
            "data": "sklearn load_digits, standardised; stratified held-out test split; IID equal shards per site",
            "test_examples": len(digits.y_test),
            "train_examples": len(digits.y_train),
            "n_sites": list(N_SITES),
            "rounds": ROUNDS,
            "local_steps": LOCAL_STEPS,
            "local_lr": LR,
            "model": "softmax regression (64 -> 10) from zeros, full-batch SGD",
            "byzantine_sites": "sites 0..f-1 (they win index ties)",
            "sign_flip_scale": SIGN_FLIP_SCALE,
            "gaussian_sigma": GAUSSIAN_SIGMA,
            "honest_delta_rms_round1": {k: round(v, 5) for k, v in honest_rms.items()},
            "scaling": "label-flipped delta boosted by n/f (model replacement)",
            "label_flip": "y -> 9 - y at the attackers' local training",
            "alie": "mean - z*std (Bessel) of the round's honest deltas, z = Phi^-1((n - s)/n), s = floor(n/2+1) - f",
            "converged": f"first round with accuracy >= clean final - {CONVERGED_WITHIN_PP} pp",
            "gates": {
                "robust_max_drop_pp": MAX_ROBUST_DROP_PP,
                "robust_gated_fraction": GATED_FRACTION,
                "fedavg_min_drop_pp": MIN_FEDAVG_DROP_PP,
                "fedavg_fraction": FEDAVG_FRACTION,
            },
        },
        "clean": clean_rows,
        "cells": cells,
    }
    write_report("FL-2", figures, passed)
    assert gated, "no robust cell at f/n <= 20%: the matrix is empty"
    assert not robust_failures, robust_failures
    assert fedavg_drop_pp is not None, "no FedAvg cell under scaling/sign flip at f/n >= 10%"
    assert fedavg_drop_pp >= MIN_FEDAVG_DROP_PP, f"FedAvg dropped only {fedavg_drop_pp} pp: the harness is broken"
    assert runtime_s < RUNTIME_BUDGET_S, runtime_s


def test_matrix_covers_every_rule_up_to_its_limit() -> None:
    """The f each rule admits comes from its requirements: Krum/Multi-Krum n >= 2f+3, Bulyan
    n >= 4f+3, median n >= 2f+1, trimmed mean floor(beta*n) >= f with beta < 1/2."""
    for n in N_SITES:
        limits = {
            rule: max((f for f in range(1, n) if rule_params(rule, n, f) is not None), default=0)
            for rule in AGGREGATORS
        }
        assert limits == {
            "fedavg": (n - 1) // 2,
            "fedmedian": (n - 1) // 2,
            "trimmed_mean": (n - 1) // 2,
            "krum": (n - 3) // 2,
            "multikrum": (n - 3) // 2,
            "bulyan": (n - 3) // 4,
        }, (n, limits)
        params = rule_params("trimmed_mean", n, limits["trimmed_mean"])
        assert params is not None
        strategy = make_strategy("trimmed_mean", params)
        assert isinstance(strategy, TrimmedMean)
        assert strategy.num_trim(n) == limits["trimmed_mean"]


def test_batched_local_training_matches_one_site_at_a_time(digits: Digits, one_thread: None) -> None:
    """Training all sites as one batch gives each site the delta it would get alone."""
    fed = digits.federation(5)
    state = initial_state(fed.x_sites.shape[2])
    state = {k: v + 0.01 for k, v in state.items()}
    together = local_deltas(state, fed.x_sites, fed.y_sites)
    for i in range(fed.num_sites):
        alone = local_deltas(state, fed.x_sites[i : i + 1], fed.y_sites[i : i + 1])[0]
        for key in alone:
            torch.testing.assert_close(together[i][key], alone[key], rtol=1e-5, atol=1e-6)
