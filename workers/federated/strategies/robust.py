"""Byzantine-robust rules: coordinate-wise median and trimmed mean, Krum, Multi-Krum, Bulyan.

All follow Flower 1.42's ``flwr.serverapp.strategy`` definitions (pinned by the golden vectors):

* **Unweighted**, as Flower's: ``num_examples`` is ignored by the median, the trimmed mean, Krum's
  choice and Bulyan (an attacker could otherwise claim a huge example count), except that
  Multi-Krum averages the participants it selects weighted by ``num_examples`` (Flower's
  ``aggregate_arrayrecords``; Blanchard et al.'s Multi-Krum averages them uniformly).
* Trimmed mean cuts ``floor(beta * n)`` values at each end (scipy's ``trim_mean``).
* Krum scores each participant by the sum of squared distances to its ``n - f - 2`` nearest others
  and returns the lowest-scoring participant's model as is.
* Bulyan (El Mhamdi et al. 2018) selects ``theta = n - 2f`` participants, then takes element-wise
  the mean of the ``beta = theta - 2f`` values nearest the median. Flower 1.42 selects the
  ``theta`` with the best Multi-Krum scores computed once over all ``n`` (the paper, and Flower's
  legacy ``aggregate_bulyan``, re-run Krum on the shrinking remainder instead); this follows 1.42.

Where Flower silently degrades, these refuse (``requirements``): Krum and Multi-Krum need
``n >= 2f + 3``, Bulyan ``n >= 4f + 3`` (Flower's Bulyan skips the round), Multi-Krum
``m <= n - f``. Ties (equal scores, equal distances) go to the lower participant index, where
numpy's unstable sorts leave them unspecified.

Memory: these hold all ``n`` updates (see ``functions``): ``n x`` one update, plus scratch space
of a fixed ~40 MiB, plus the result; the Krum distance matrix is ``n x n`` float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from workers.federated.strategies.base import Param, Strategy, Tensors, Update
from workers.federated.strategies.functions import (
    as_values,
    closest_to_median_mean,
    coordinate_median,
    coordinate_trimmed_mean,
    copy_of,
    finish,
    krum_scores,
    lower_median_others,
    lowest,
    materialise,
    squared_distances,
    weighted_mean,
)


def _f(*, optional: bool) -> Param:
    if optional:
        return Param(
            "f",
            int,
            None,
            "assumed number of Byzantine participants (only checked against n)",
            minimum=0,
            optional=True,
        )
    return Param("f", int, 0, "assumed number of Byzantine participants", minimum=0)


class _Robust(Strategy):
    """Shared flow: hold the updates, check the requirements, combine, finish."""

    def _aggregate(self, global_state: Tensors, updates: Iterable[Update], *, deltas: bool) -> dict[str, torch.Tensor]:
        held = materialise(global_state, updates)
        self._check_requirements(len(held))
        floats = self._combine(global_state, held, deltas=deltas)
        others = lower_median_others(global_state, [tensors for tensors, _ in held], deltas=deltas)
        return finish(global_state, floats, others)

    def _combine(
        self, global_state: Tensors, held: Sequence[tuple[Tensors, int]], *, deltas: bool
    ) -> dict[str, torch.Tensor]:
        """The result's floating entries as full values (new tensors, any floating dtype)."""
        raise NotImplementedError


class FedMedian(_Robust):
    """Coordinate-wise median (Yin et al. 2018), ``numpy.median`` semantics (even ``n``: mean of
    the two middle values). Tolerates ``f < n/2``; give ``f`` to have that checked."""

    name = "fedmedian"
    PARAMS = (_f(optional=True),)

    def violations(self, num_participants: int) -> list[tuple[str, str]]:
        problems = super().violations(num_participants)
        f = self.params["f"]
        if not problems and f is not None and num_participants < 2 * f + 1:
            problems.append(
                ("f", f"fedmedian needs n >= 2f+1 = {2 * f + 1} participants (f={f}), got n={num_participants}")
            )
        return problems

    def _combine(
        self, global_state: Tensors, held: Sequence[tuple[Tensors, int]], *, deltas: bool
    ) -> dict[str, torch.Tensor]:
        return coordinate_median(global_state, [tensors for tensors, _ in held], deltas=deltas)


class TrimmedMean(_Robust):
    """Coordinate-wise trimmed mean (Yin et al. 2018; Flower's ``FedTrimmedAvg``): drop the
    ``floor(beta * n)`` smallest and largest values of each coordinate, average the rest. With
    ``f`` given, requires ``floor(beta * n) >= f`` (so ``beta >= f/n``) so every Byzantine value
    can be cut."""

    name = "trimmed_mean"
    PARAMS = (
        Param("beta", float, 0.2, "fraction cut at each end", minimum=0.0, maximum=0.5, exclusive_maximum=True),
        _f(optional=True),
    )

    def num_trim(self, num_participants: int) -> int:
        """Values cut at each end for ``num_participants`` (Flower: ``int(beta * n)``)."""
        return int(self.params["beta"] * num_participants)

    def violations(self, num_participants: int) -> list[tuple[str, str]]:
        problems = super().violations(num_participants)
        f = self.params["f"]
        if not problems and f is not None:
            cut = self.num_trim(num_participants)
            if cut < f:
                problems.append(
                    (
                        "beta",
                        f"trimmed_mean cuts floor(beta*n) = {cut} per end for n={num_participants} and "
                        f"beta={self.params['beta']:g}, fewer than f={f}: "
                        f"needs beta >= f/n = {f / num_participants:.4g}",
                    )
                )
        return problems

    def _combine(
        self, global_state: Tensors, held: Sequence[tuple[Tensors, int]], *, deltas: bool
    ) -> dict[str, torch.Tensor]:
        return coordinate_trimmed_mean(
            global_state, [tensors for tensors, _ in held], self.num_trim(len(held)), deltas=deltas
        )


class Krum(_Robust):
    """Krum (Blanchard et al. 2017): the single participant whose ``n - f - 2`` nearest others
    are closest (sum of squared L2 distances). Needs ``n >= 2f + 3``."""

    name = "krum"
    PARAMS: ClassVar[tuple[Param, ...]] = (_f(optional=False),)

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.f: int = self.params["f"]
        self.last_selected: list[int] = []
        """Participant indices chosen by the latest ``aggregate`` (best first), for audit logs."""

    def violations(self, num_participants: int) -> list[tuple[str, str]]:
        problems = super().violations(num_participants)
        if not problems and num_participants < 2 * self.f + 3:
            problems.append(
                (
                    "f",
                    f"{self.name} needs n >= 2f+3 = {2 * self.f + 3} participants "
                    f"(f={self.f}), got n={num_participants}",
                )
            )
        return problems

    def num_selected(self, num_participants: int) -> int:
        return 1

    def select(self, global_state: Tensors, states: Sequence[Tensors]) -> list[int]:
        """Indices of the selected participants, best Krum score first."""
        scores = krum_scores(squared_distances(global_state, states), self.f)
        return lowest(scores, self.num_selected(len(states)))

    def _combine(
        self, global_state: Tensors, held: Sequence[tuple[Tensors, int]], *, deltas: bool
    ) -> dict[str, torch.Tensor]:
        self.last_selected = self.select(global_state, [tensors for tensors, _ in held])
        return copy_of(global_state, held[self.last_selected[0]][0], deltas=deltas)


class MultiKrum(Krum):
    """Multi-Krum: the example-weighted mean of the ``m`` best Krum scores (Flower's
    ``MultiKrum``). ``m`` defaults to ``n - f``, the largest Blanchard et al. allow; ``m = 1``
    is Krum."""

    name = "multikrum"
    PARAMS = (
        _f(optional=False),
        Param("m", int, None, "participants averaged (default n - f)", minimum=1, optional=True),
    )

    def num_selected(self, num_participants: int) -> int:
        m = self.params["m"]
        return num_participants - self.f if m is None else int(m)

    def violations(self, num_participants: int) -> list[tuple[str, str]]:
        problems = super().violations(num_participants)
        m = self.params["m"]
        if not problems and m is not None and m > num_participants - self.f:
            problems.append(("m", f"multikrum needs m <= n-f = {num_participants - self.f} (f={self.f}), got m={m}"))
        return problems

    def _combine(
        self, global_state: Tensors, held: Sequence[tuple[Tensors, int]], *, deltas: bool
    ) -> dict[str, torch.Tensor]:
        self.last_selected = self.select(global_state, [tensors for tensors, _ in held])
        # Averaged in participant order (a fixed order, FL-6), not score order.
        chosen = [held[i] for i in sorted(self.last_selected)]
        return as_values(global_state, weighted_mean(global_state, chosen, deltas=deltas).floats, deltas=deltas)


class Bulyan(Krum):
    """Bulyan (El Mhamdi et al. 2018) as Flower 1.42: the ``theta = n - 2f`` best Multi-Krum
    scores, then element-wise the mean of the ``beta = theta - 2f`` values nearest their median.
    Needs ``n >= 4f + 3``."""

    name = "bulyan"
    PARAMS = (_f(optional=False),)

    def violations(self, num_participants: int) -> list[tuple[str, str]]:
        problems = Strategy.violations(self, num_participants)
        if not problems and num_participants < 4 * self.f + 3:
            problems.append(
                ("f", f"bulyan needs n >= 4f+3 = {4 * self.f + 3} participants (f={self.f}), got n={num_participants}")
            )
        return problems

    def num_selected(self, num_participants: int) -> int:
        return num_participants - 2 * self.f

    def _combine(
        self, global_state: Tensors, held: Sequence[tuple[Tensors, int]], *, deltas: bool
    ) -> dict[str, torch.Tensor]:
        states = [tensors for tensors, _ in held]
        self.last_selected = self.select(global_state, states)
        selected = [states[i] for i in sorted(self.last_selected)]
        return closest_to_median_mean(global_state, selected, len(selected) - 2 * self.f, deltas=deltas)
