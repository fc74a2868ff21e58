"""Server-side aggregation strategies by name: the registry, ``make_strategy`` and ``requirements``.

Usage::

    strategy = make_strategy("fedadam", {"eta": 0.05})
    problems = requirements("krum", {"f": 2}, num_participants=6)   # ["krum needs n >= 2f+3 ..."]
    new_global = strategy.aggregate(global_state, [(state_a, 120), (state_b, 80)])
    saved = strategy.state_dict()            # persist with the round; load_state_dict(saved) resumes

See ``base`` for the data model, dtype rules and determinism guarantees, ``functions`` for the
mathematics and memory, and each rule's module for how it relates to Flower 1.42 and the papers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workers.federated.strategies.base import Param, Strategy, Tensors, Update
from workers.federated.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from workers.federated.strategies.mean import FedAvg, FedProx
from workers.federated.strategies.robust import Bulyan, FedMedian, Krum, MultiKrum, TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FedAvg, FedProx, FedAdagrad, FedAdam, FedYogi, FedMedian, TrimmedMean, Krum, MultiKrum, Bulyan)
}
"""Registry name -> strategy class; ``STRATEGIES[name].PARAMS`` describes its parameters."""


def make_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """A fresh strategy by registry name.

    Raises:
        ValueError: unknown name, unknown param, or a param of the wrong type or out of range
            (the message names the param).
    """
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ValueError(f"unknown strategy {name!r} (known: {', '.join(sorted(STRATEGIES))})")
    return cls(params or {})


def requirements(name: str, params: Mapping[str, Any] | None, num_participants: int) -> list[str]:
    """Constraints ``name`` with ``params`` violates for ``num_participants`` updates ([] if none).

    Raises:
        ValueError: as :func:`make_strategy` (bad name or params are not a participant-count issue).
    """
    return make_strategy(name, params).requirements(num_participants)


__all__ = [
    "STRATEGIES",
    "Bulyan",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Krum",
    "MultiKrum",
    "Param",
    "Strategy",
    "Tensors",
    "TrimmedMean",
    "Update",
    "make_strategy",
    "requirements",
]
