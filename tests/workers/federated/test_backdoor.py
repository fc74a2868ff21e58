"""Targeted backdoor (RELIABILITY FL-3) against norm bounding plus "weak DP" on scikit-learn's digits.
Figures: ``reports/FL-3.json``.

Setup (as FL-2's, ``test_robustness``): ``load_digits`` with a stratified, seeded 20% held-out set,
standardised on the training part, dealt IID to ``N_SITES`` = 20 sites; a softmax regression from
zeros; each round every site runs ``LOCAL_STEPS`` full-batch SGD steps and submits its delta.

Attack (Bagdasaryan et al. 2020; Sun et al. 2019, "Can you really backdoor federated learning?"):
the ``f`` attackers (sites ``0 .. f-1``), in **every** round, train on their own rows plus a copy of
them stamped with a trigger (the bottom-right 2x2 pixels at full ink) and labelled ``TARGET``, and
boost the delta by ``n/f`` (model replacement). They know the defence: an over-bound update is
rejected by the platform (``workers.federated.validate``), so they send the most it accepts, their
delta scaled to exactly the bound.

Defence: the platform's central DP path (``aggregate_round`` with ``dp.mode = "central"``): every
delta clipped to ``update_bound`` M (honest sites clip their own; the server refuses a larger one),
summed over the fixed denominator of selected sites, plus Gaussian noise of std ``sigma * M / n``.
"Weak DP" is a small ``sigma``: it is a defence here, not a privacy guarantee.

Metrics per cell: main-task accuracy on the clean held-out set, and backdoor success (the share of
held-out images of other classes that, stamped with the trigger, are classified ``TARGET``).

Gates: without a defence the backdoor succeeds (>= 90% at f = 1: otherwise the harness attacks
nothing), and clean runs show none (<= 2%); at the operating point (M = 0.1, sigma = 1) with f = 1
of 20 (5%), over ``NOISE_SEEDS`` draws of the noise, the mean backdoor success <= 10% and the mean
main accuracy within 1 point of the clean run under the same defence (the worst draw and the draws
over 10% are reported: single draws do pass 10%). Once clipped, the boost changes nothing (every
attacker delta has norm M): under the defence this is data poisoning at the largest accepted norm.
The harness clips the attackers' deltas itself, so the platform's rejection path is not exercised
here (``test_validate`` covers it). Reported, not gated: f = 2 (10%) at every point, where this persistent attacker
still implants the trigger unless the noise also costs the main task more than 10 points, and the
defence's own cost against the undefended clean run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from tests.conftest import write_report
from workers.federated import attacks
from workers.federated.rounds import aggregate_round
from workers.federated.spec import FederationSpec
from workers.federated.strategies import make_strategy
from workers.federated.validate import clip_update, update_l2_norm

N_SITES = 20
ROUNDS = 30
LOCAL_STEPS = 5
LR = 0.5
TARGET = 0
TRIGGER = (54, 55, 62, 63)  # the bottom-right 2x2 of the 8x8 image
INK = 16.0
ATTACKERS = (1, 2)
OPERATING_POINT = (0.1, 1.0)  # (update_bound M, noise multiplier sigma)
POINTS = ((0.2, 1.0), OPERATING_POINT, (0.1, 5.0), (0.2, 5.0))
MAX_BACKDOOR = 0.10
MAX_MAIN_DROP_PP = 1.0
MIN_UNDEFENDED_BACKDOOR = 0.90
MAX_CLEAN_BACKDOOR = 0.02
NOISE_SEEDS = 10  # the operating point is gated on the mean over this many noise draws


class Digits:
    def __init__(self) -> None:
        x, y = load_digits(return_X_y=True)
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
        scaler = StandardScaler().fit(x_train)

        def t(a: np.ndarray) -> Tensor:
            return torch.tensor(scaler.transform(a), dtype=torch.float32)

        def stamp(a: np.ndarray) -> np.ndarray:
            a = a.copy()
            a[:, list(TRIGGER)] = INK
            return a

        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))
        self.per_site = len(order) // N_SITES
        self.index = order[: self.per_site * N_SITES].view(N_SITES, self.per_site)
        self.x, self.y, self.x_stamped = t(x_train), torch.tensor(y_train), t(stamp(x_train))
        self.x_test, self.y_test = t(x_test), torch.tensor(y_test)
        self.x_backdoor = t(stamp(x_test[y_test != TARGET]))


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits()


def _local(state: Mapping[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
    w = state["linear.weight"].clone().requires_grad_(True)
    b = state["linear.bias"].clone().requires_grad_(True)
    opt = torch.optim.SGD([w, b], lr=LR)
    for _ in range(LOCAL_STEPS):
        opt.zero_grad()
        F.cross_entropy(F.linear(x, w, b), y).backward()
        opt.step()
    return {"linear.weight": (w - state["linear.weight"]).detach(), "linear.bias": (b - state["linear.bias"]).detach()}


def _accuracy(state: Mapping[str, Tensor], x: Tensor, y: Tensor) -> float:
    return float((F.linear(x, state["linear.weight"], state["linear.bias"]).argmax(1) == y).double().mean())


def run(d: Digits, f: int, defence: tuple[float, float] | None, noise_seed: int = 0) -> dict[str, float]:
    spec: dict[str, Any] = {"train": {"model": {"name": "mlp"}}, "rounds": ROUNDS, "min_participants": N_SITES}
    if defence is not None:
        bound, sigma = defence
        spec |= {"update_bound": bound, "dp": {"mode": "central", "noise_multiplier": sigma, "delta": 1e-3}}
    fspec = FederationSpec.from_dict(spec)
    strategy = make_strategy("fedavg")
    state = {"linear.weight": torch.zeros(10, 64), "linear.bias": torch.zeros(10)}
    for r in range(1, ROUNDS + 1):
        updates = []
        for i in range(N_SITES):
            rows = d.index[i]
            if i < f:
                x = torch.cat([d.x[rows], d.x_stamped[rows]])
                y = torch.cat([d.y[rows], torch.full((len(rows),), TARGET)])
                delta = attacks.boost(_local(state, x, y), factor=attacks.replacement_factor(N_SITES, f))
            else:
                delta = _local(state, d.x[rows], d.y[rows])
            if fspec.update_bound is not None:  # honest: clipped; attacker: the largest update accepted
                delta = clip_update(delta, fspec.update_bound)
                assert update_l2_norm(delta) <= fspec.update_bound * (1 + 1e-6)
            updates.append((delta, d.per_site))
        state = aggregate_round(
            fspec, strategy, state, updates, central_noise_seed=1000 * noise_seed + r, selected=N_SITES
        )
    target = torch.full((len(d.x_backdoor),), TARGET)
    return {"main": _accuracy(state, d.x_test, d.y_test), "backdoor": _accuracy(state, d.x_backdoor, target)}


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: 1 thread is faster and reproducible
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_fl3_norm_bounding_and_weak_dp_against_a_model_replacement_backdoor(digits: Digits) -> None:
    cells: list[dict[str, Any]] = []
    clean: dict[tuple[float, float] | None, dict[str, float]] = {}
    for defence in (None, *POINTS):
        clean[defence] = run(digits, 0, defence)
        for f in ATTACKERS:
            got = run(digits, f, defence)
            base = clean[defence]
            cells.append({
                "defence": None if defence is None else {"update_bound": defence[0], "noise_multiplier": defence[1]},
                "f": f, "f_over_n": f / N_SITES,
                "main_accuracy": round(got["main"], 4), "backdoor_success": round(got["backdoor"], 4),
                "main_delta_pp_vs_clean_same_defence": round(100 * (got["main"] - base["main"]), 2),
                "main_delta_pp_vs_undefended_clean": round(100 * (got["main"] - clean[None]["main"]), 2),
            })  # fmt: skip
    undefended = next(c for c in cells if c["defence"] is None and c["f"] == 1)
    # The operating point over NOISE_SEEDS draws of the noise: one draw is not a property.
    draws = []
    for seed in range(NOISE_SEEDS):
        base, got = run(digits, 0, OPERATING_POINT, seed), run(digits, 1, OPERATING_POINT, seed)
        draws.append({"seed": seed, "backdoor_success": round(got["backdoor"], 4),
                      "main_delta_pp_vs_clean_same_defence": round(100 * (got["main"] - base["main"]), 2),
                      "clean_backdoor": round(base["backdoor"], 4)})  # fmt: skip
    gated = {
        "backdoor_success_mean": round(sum(d["backdoor_success"] for d in draws) / NOISE_SEEDS, 4),
        "backdoor_success_max": max(d["backdoor_success"] for d in draws),
        "draws_over_10pct": sum(d["backdoor_success"] > MAX_BACKDOOR for d in draws),
        "main_delta_pp_mean": round(sum(d["main_delta_pp_vs_clean_same_defence"] for d in draws) / NOISE_SEEDS, 2),
        "main_delta_pp_worst": min(d["main_delta_pp_vs_clean_same_defence"] for d in draws),
        "draws": draws,
    }
    checks = {
        "harness_undefended_backdoor_succeeds": undefended["backdoor_success"] >= MIN_UNDEFENDED_BACKDOOR,
        "clean_runs_show_no_backdoor": all(v["backdoor"] <= MAX_CLEAN_BACKDOOR for v in clean.values())
        and all(d["clean_backdoor"] <= MAX_CLEAN_BACKDOOR for d in draws),
        "operating_point_mean_backdoor_at_most_10pct": gated["backdoor_success_mean"] <= MAX_BACKDOOR,
        "operating_point_mean_main_within_1pp": gated["main_delta_pp_mean"] >= -MAX_MAIN_DROP_PP,
    }
    passed = all(checks.values())
    write_report(
        "FL-3",
        {
            "sites": N_SITES, "rounds": ROUNDS, "attack": "model replacement (boost n/f), every round, scaled to the bound",
            "trigger": "bottom-right 2x2 pixels at full ink, label 0",
            "operating_point": {"update_bound": OPERATING_POINT[0], "noise_multiplier": OPERATING_POINT[1]},
            "clean": {("none" if k is None else f"M={k[0]},sigma={k[1]}"): v for k, v in clean.items()},
            "operating_point_f1_over_noise_seeds": gated, "cells": cells, "checks": checks,
            "f2_backdoor_at_most_10pct_with_main_within_10pp": [
                c for c in cells if c["f"] == 2 and c["backdoor_success"] <= MAX_BACKDOOR
                and c["main_delta_pp_vs_undefended_clean"] >= -10.0
            ],
        },
        passed,
    )  # fmt: skip
    assert passed, checks
