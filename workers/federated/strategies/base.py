"""The ``Strategy`` interface every aggregation rule implements, its parameters and shared checks.

Data model
----------
* A **model state** is a ``Mapping[str, torch.Tensor]`` (a ``state_dict``). The *global* state
  fixes the key order, shapes and dtypes; everything a strategy returns follows it.
* An **update** is ``(tensors, num_examples)``: one participant's tensors and the number of
  examples it trained on (the weight of the mean rules; the robust rules ignore it, as Flower's
  do). ``tensors`` is either the participant's full state (``deltas=False``, the default) or its
  *delta* ``local - global`` (``deltas=True``); every rule returns the full new global state.
* Each update must have exactly the global's keys, and each tensor the global's shape and dtype
  (``ValueError`` otherwise, naming the participant and key). Finiteness, norm bounds and the
  like are ``workers.federated.validate``'s business; strategies do not re-check them.

Which entries are aggregated
----------------------------
Floating-point entries go through the strategy's rule. Every other entry (integer buffers such as
BatchNorm's ``num_batches_tracked``, bool masks) has no mean, so it takes an actual participant's
value, element-wise (``global + that`` of the deltas):

* the mean rules (FedAvg, FedProx, FedAdagrad/FedAdam/FedYogi) take the **maximum** over the
  participants: a counter stays a counter (an average of step counts is not a step count),
  constants stay constant, order does not matter, and it streams;
* the robust rules (median, trimmed mean, Krum, Multi-Krum, Bulyan) take the **lower median**
  (the ``(n-1)//2``-th smallest), so with fewer than half the participants Byzantine the value
  lies within the honest ones' range: no single participant controls any entry.

Complex tensors are refused. Robust rules measure distances over the floating entries only.

Precision
---------
Arithmetic runs in an *accumulator dtype*: float64 for float32/float64 entries, float32 for
float16/bfloat16 ones (see :func:`accumulator_dtype`), and the result is rounded once to the
global's dtype. Float64 accumulation of float32 models makes the mean exact to well below float32
resolution and independent of how many participants there are; for 16-bit models float32 already
has 16 more mantissa bits than the data, and a float64 buffer would be 4x an update instead of 2x.

Determinism (RELIABILITY FL-6)
------------------------------
Given the same global state, the same updates in the same participant order, and the same
strategy state, ``aggregate`` returns bit-identical tensors: participants are consumed in the
given order, keys in the global's order, the arithmetic is element-wise and made of single
correctly rounded IEEE operations (no ``alpha=`` multiply-adds, which torch may fuse on one CPU
and not on another), reductions never depend on the thread count (``functions.rowsum``; tested
with 1 and 2 threads), ties are broken by participant index, and no random numbers are drawn.
A strategy's ``state_dict()`` holds everything it carries between rounds, so
``load_state_dict(saved)`` followed by ``aggregate`` re-aggregates a round bit-identically. The
promise is for the same torch build and hardware class; it is tested on CPU.

Failure: every check (structure, weights, requirements, moment shapes) runs before the strategy's
state changes, so a ``ValueError`` leaves it as it was. Only a failure inside FedOpt's in-place
step (out of memory) can leave moments half advanced; the strategy then refuses to aggregate or
save until ``load_state_dict`` restores a persisted state.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

Tensors = Mapping[str, torch.Tensor]
"""A model state (or delta): parameter and buffer name to tensor."""

Update = tuple[Tensors, int]
"""One participant's contribution: ``(tensors, num_examples)``."""

_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Param:
    """One hyper-parameter of a strategy: its JSON type, default and allowed range.

    The spec validator reads ``Strategy.PARAMS`` to describe and check a federation spec; the same
    table checks the values passed to :func:`workers.federated.strategies.make_strategy`.
    """

    name: str
    kind: type[int] | type[float]
    default: int | float | None
    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    optional: bool = False  # None is a value ("not given")

    def describe_range(self) -> str:
        parts = []
        if self.minimum is not None:
            parts.append(f"{'>' if self.exclusive_minimum else '>='} {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"{'<' if self.exclusive_maximum else '<='} {self.maximum:g}")
        return " and ".join(parts)

    def check(self, strategy: str, value: Any) -> int | float | None:
        """Return ``value`` as this param's type, or raise ``ValueError`` naming the param."""
        where = f"strategy {strategy!r}: param {self.name!r}"
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{where} must be given (it has no 'not set' value)")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a{'n int' if self.kind is int else ' number'}, got {value!r}")
        if self.kind is int and not isinstance(value, int):
            raise ValueError(f"{where} must be an int, got {value!r}")
        number: int | float = value if self.kind is int else float(value)
        if not math.isfinite(number):
            raise ValueError(f"{where} must be finite, got {value!r}")
        low_ok = self.minimum is None or (number > self.minimum if self.exclusive_minimum else number >= self.minimum)
        high_ok = self.maximum is None or (number < self.maximum if self.exclusive_maximum else number <= self.maximum)
        if not (low_ok and high_ok):
            raise ValueError(f"{where} must be {self.describe_range()}, got {value!r}")
        return number


class Strategy(ABC):
    """A server-side aggregation rule (Flower's strategy, reduced to its mathematics).

    Subclasses set ``name`` (the registry key), ``PARAMS`` and ``streaming``, read their validated
    parameters from ``self.params`` in ``__init__``, and implement :meth:`_aggregate`.

    Args:
        params: hyper-parameters by name; missing ones take their defaults. Unknown names and
            out-of-range values raise ``ValueError`` naming the param.
    """

    name: ClassVar[str]
    PARAMS: ClassVar[tuple[Param, ...]] = ()
    streaming: ClassVar[bool] = False
    """True when ``aggregate`` consumes updates one at a time (memory independent of their number)."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params: dict[str, Any] = parse_params(self.name, self.PARAMS, params or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    # --- what the platform asks of a strategy ----------------------------------------------------
    def requirements(self, num_participants: int) -> list[str]:
        """Constraints this strategy's parameters violate for ``num_participants`` updates.

        An empty list means it can aggregate that many; ``aggregate`` raises ``ValueError`` with
        these messages otherwise.
        """
        return [message for _param, message in self.violations(num_participants)]

    def violations(self, num_participants: int) -> list[tuple[str, str]]:
        """:meth:`requirements` with the parameter each violation is about (``""``: the count
        itself), so a spec validator can name the field. Subclasses extend this one."""
        if num_participants < 1:
            return [("", f"{self.name} needs at least 1 participant, got {num_participants}")]
        return []

    def client_config(self) -> dict[str, Any]:
        """Values the participants must apply locally for this rule (e.g. FedProx's ``proximal_mu``)."""
        return {}

    def aggregate(
        self, global_state: Tensors, updates: Iterable[Update], *, deltas: bool = False
    ) -> dict[str, torch.Tensor]:
        """Combine one round's updates into the next global state.

        Args:
            global_state: the state the participants started the round from.
            updates: ``(tensors, num_examples)`` per participant, in a fixed participant order
                (the order is part of the input for FL-6). Streaming strategies consume an
                iterator one update at a time and drop each before asking for the next.
            deltas: the tensors are ``local - global`` rather than full states.

        Returns:
            A new dict in the global's key order, each tensor with the global's dtype and device.
            Neither the inputs nor tensors aliasing them are returned.

        Raises:
            ValueError: no updates, structural mismatch, bad ``num_examples``, or
                :meth:`requirements` violated.
        """
        check_global(global_state)
        return self._aggregate(global_state, updates, deltas=deltas)

    @abstractmethod
    def _aggregate(
        self, global_state: Tensors, updates: Iterable[Update], *, deltas: bool
    ) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]:
        """Everything carried between rounds, as plain values and tensors (``torch.save``-able,
        loadable with ``weights_only=True``). Stateless rules carry only their name and params."""
        return {"strategy": self.name, "params": dict(self.params)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output. Refuses another strategy's or other params' state."""
        if state.get("strategy") != self.name:
            raise ValueError(f"state is for strategy {state.get('strategy')!r}, not {self.name!r}")
        saved = state.get("params")
        if not isinstance(saved, Mapping):
            raise ValueError("state has no params mapping")
        for key in sorted(set(saved) | set(self.params)):
            if saved.get(key) != self.params.get(key):
                raise ValueError(
                    f"state was saved with param {key!r}={saved.get(key)!r}, this strategy has {self.params.get(key)!r}"
                )

    def _check_requirements(self, num_participants: int) -> None:
        problems = self.requirements(num_participants)
        if problems:
            raise ValueError("; ".join(problems))


def parse_params(strategy: str, table: Sequence[Param], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``raw`` against ``table``; return every param (defaults filled in) in table order."""
    known = {p.name for p in table}
    for key in raw:
        if key not in known:
            hint = ", ".join(sorted(known)) or "none"
            raise ValueError(f"strategy {strategy!r}: unknown param {key!r} (known params: {hint})")
    return {p.name: p.check(strategy, raw.get(p.name, p.default)) for p in table}


# --- dtype rules ---------------------------------------------------------------------------------
def is_aggregated(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` goes through the strategy's rule (floating point) or the max rule."""
    return tensor.is_floating_point()


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a floating entry is computed in: float32 for 16-bit floats, float64 otherwise."""
    return torch.float32 if dtype in _SIXTEEN_BIT else torch.float64


def check_global(global_state: Tensors) -> None:
    """Refuse a global state the rules have no definition for."""
    if not global_state:
        raise ValueError("global state has no tensors")
    for key, tensor in global_state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"global state entry {key!r} is not a tensor")
        if tensor.is_complex():
            raise ValueError(
                f"global state entry {key!r} is complex ({tensor.dtype}); strategies define no rule for it"
            )


def check_update(global_state: Tensors, update: Update, index: int) -> tuple[Tensors, int]:
    """Check one participant's update against the global state; return it unpacked.

    Raises:
        ValueError: naming participant ``index`` and the first mismatch.
    """
    try:
        tensors, num_examples = update
    except (TypeError, ValueError):
        raise ValueError(f"participant {index}: an update is (tensors, num_examples), got {type(update).__name__}")
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
        raise ValueError(f"participant {index}: num_examples must be an int >= 0, got {num_examples!r}")
    if not isinstance(tensors, Mapping):
        raise ValueError(f"participant {index}: tensors must be a mapping, got {type(tensors).__name__}")
    if len(tensors) != len(global_state) or any(key not in tensors for key in global_state):
        missing = sorted(set(global_state) - set(tensors))
        extra = sorted(set(tensors) - set(global_state))
        raise ValueError(
            f"participant {index}: keys differ from the global state (missing {missing}, unexpected {extra})"
        )
    for key, ref in global_state.items():
        tensor = tensors[key]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"participant {index}: {key!r} is not a tensor")
        if tensor.shape != ref.shape or tensor.dtype != ref.dtype:
            raise ValueError(
                f"participant {index}: {key!r} is {tuple(tensor.shape)} {tensor.dtype}, "
                f"the global state has {tuple(ref.shape)} {ref.dtype}"
            )
    return tensors, num_examples
