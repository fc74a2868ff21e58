"""FedAdagrad, FedAdam and FedYogi: adaptive server optimizers on the pseudo-gradient.

Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR), Algorithm 2, as Flower 1.42
implements it (``flwr.serverapp.strategy.FedOpt`` and subclasses), with Flower's parameter names
and defaults. Each round:

* ``delta = weighted_mean(updates) - x``           (the pseudo-gradient; or the mean delta)
* ``m = beta_1 * m + (1 - beta_1) * delta``
* ``v = v + delta^2``                              FedAdagrad
* ``v = beta_2 * v + (1 - beta_2) * delta^2``      FedAdam
* ``v = v - (1 - beta_2) * delta^2 * sign(v - delta^2)``   FedYogi
* ``x = x + eta_t * m / (sqrt(v) + tau)``

Where Flower 1.42 departs from the paper, this module follows Flower (the golden vectors in
``tests/workers/federated/golden/flower_1_42.json`` pin it):

* ``m`` and ``v`` start at 0; the paper starts ``v`` at ``v_{-1} >= tau^2``.
* FedAdagrad has no momentum (``beta_1 = 0``, no parameter); the paper's FedAdagrad has ``beta_1``.
* FedAdam scales its step with Adam's bias correction, which the paper's Algorithm 2 does not:
  ``eta_t = eta * sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))`` for 1-based round ``t``, one
  power ahead of Kingma & Ba's ``t``. FedAdagrad and FedYogi use ``eta`` as is.
* ``eta_l`` (the participants' learning rate) does not enter the server's step; it is carried for
  the participants through :meth:`FedOpt.client_config`.
* The default ``tau`` is Flower 1.42's Message-API default, 1e-3 for all three (its legacy
  ``flwr.server.strategy`` FedAdagrad/FedAdam default to 1e-9).

State and memory: the strategy carries ``num_rounds`` (completed aggregations, so FedAdam's
``t``) and ``m``, ``v`` per floating entry, kept in float32 for 16/32-bit models and float64 for
float64 ones; the step runs in float64, a slice of ``functions.STEP_ELEMENTS`` at a time. The
mean streams as FedAvg's does and the moments are updated in place, so the extra memory stays
within 3x one update on top of the moments themselves. If the step fails part-way (out of memory) the
moments are half advanced: the strategy then refuses to aggregate or save until
:meth:`~FedOpt.load_state_dict` restores a persisted state.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from workers.federated.strategies.base import Param, Strategy, Tensors, Update
from workers.federated.strategies.functions import as_deltas, slices, weighted_mean

_ETA_L = "client-side learning rate, carried for the participants (not used by the server step)"
_TAU = "adaptivity: added to sqrt(v) in the step's denominator"


def _eta(default: float) -> Param:
    return Param("eta", float, default, "server-side learning rate", minimum=0.0, exclusive_minimum=True)


def _eta_l(default: float) -> Param:
    return Param("eta_l", float, default, _ETA_L, minimum=0.0, exclusive_minimum=True)


def _beta(name: str, default: float, what: str) -> Param:
    return Param(name, float, default, what, minimum=0.0, maximum=1.0, exclusive_maximum=True)


def _tau(default: float) -> Param:
    return Param("tau", float, default, _TAU, minimum=0.0, exclusive_minimum=True)


def moment_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype ``m`` and ``v`` are stored in for an entry of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class FedOpt(Strategy):
    """Shared machinery of the adaptive server optimizers (Flower's ``FedOpt``)."""

    streaming = True

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.eta: float = self.params["eta"]
        self.eta_l: float = self.params["eta_l"]
        self.tau: float = self.params["tau"]
        self.beta_1: float = self.params.get("beta_1", 0.0)
        self.beta_2: float = self.params.get("beta_2", 0.0)
        self.num_rounds = 0
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}
        self._broken: str | None = None

    def client_config(self) -> dict[str, Any]:
        return {"eta_l": self.eta_l}

    def step_size(self, server_round: int) -> float:
        """``eta_t`` for 1-based ``server_round``."""
        return self.eta

    @abstractmethod
    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The new ``v`` from the previous one and this round's pseudo-gradient (float64)."""

    # --- aggregation -----------------------------------------------------------------------------
    def _aggregate(self, global_state: Tensors, updates: Iterable[Update], *, deltas: bool) -> dict[str, torch.Tensor]:
        self._check_usable()
        self._check_moments(global_state)
        mean = weighted_mean(global_state, updates, deltas=deltas)
        self._check_requirements(mean.num_participants)
        pseudo_gradient = as_deltas(global_state, mean.floats, deltas=deltas)
        server_round = self.num_rounds + 1
        eta_t = self.step_size(server_round)
        out: dict[str, torch.Tensor] = {}
        try:
            for key, ref in global_state.items():
                if key not in pseudo_gradient:
                    out[key] = mean.others[key].to(device=ref.device, dtype=ref.dtype)
                    continue
                out[key] = self._step(key, ref, pseudo_gradient.pop(key), eta_t)
        except BaseException as exc:
            self._broken = f"round {server_round} failed part-way ({type(exc).__name__}); load a saved state first"
            raise
        self.num_rounds = server_round
        return out

    def _step(self, key: str, ref: torch.Tensor, delta: torch.Tensor, eta_t: float) -> torch.Tensor:
        """One entry's optimizer step, slice by slice in float64; ``m``, ``v`` updated in place."""
        dtype = moment_dtype(ref.dtype)
        if key not in self.m:
            self.m[key] = torch.zeros(ref.shape, dtype=dtype, device=ref.device)
            self.v[key] = torch.zeros(ref.shape, dtype=dtype, device=ref.device)
        elif self.m[key].device != ref.device:  # a state loaded on the CPU, a model on an accelerator
            self.m[key], self.v[key] = self.m[key].to(ref.device), self.v[key].to(ref.device)
        m_flat, v_flat = self.m[key].view(-1), self.v[key].view(-1)
        x_flat, delta_flat = ref.reshape(-1), delta.view(-1)
        result = torch.empty(ref.numel(), dtype=ref.dtype, device=ref.device)
        for part in slices(result.numel()):
            d = delta_flat[part].to(torch.float64)
            m = self.beta_1 * m_flat[part].to(torch.float64) + (1 - self.beta_1) * d
            v = self.second_moment(v_flat[part].to(torch.float64), d)
            # Flower's operation order.
            result[part] = x_flat[part].to(torch.float64) + eta_t * m / (torch.sqrt(v) + self.tau)
            m_flat[part] = m
            v_flat[part] = v
        return result.reshape(ref.shape)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise RuntimeError(f"strategy {self.name!r}: {self._broken}")

    def _check_moments(self, global_state: Tensors) -> None:
        floats = {key: ref for key, ref in global_state.items() if ref.is_floating_point()}
        for label, moments in (("m", self.m), ("v", self.v)):
            if not moments and self.num_rounds == 0:
                continue
            if set(moments) != set(floats):
                raise ValueError(
                    f"strategy {self.name!r}: moment {label} has keys {sorted(moments)}, "
                    f"the global state's floating entries are {sorted(floats)}"
                )
            for key, ref in floats.items():
                if moments[key].shape != ref.shape or moments[key].dtype != moment_dtype(ref.dtype):
                    raise ValueError(
                        f"strategy {self.name!r}: moment {label}[{key!r}] is {tuple(moments[key].shape)} "
                        f"{moments[key].dtype}, the global state's entry needs "
                        f"{tuple(ref.shape)} {moment_dtype(ref.dtype)}"
                    )

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._check_usable()
        state = super().state_dict()
        state["num_rounds"] = self.num_rounds
        state["m"] = {key: tensor.clone() for key, tensor in self.m.items()}
        state["v"] = {key: tensor.clone() for key, tensor in self.v.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        num_rounds = state.get("num_rounds")
        if isinstance(num_rounds, bool) or not isinstance(num_rounds, int) or num_rounds < 0:
            raise ValueError(f"state num_rounds must be an int >= 0, got {num_rounds!r}")
        moments: dict[str, dict[str, torch.Tensor]] = {}
        for label in ("m", "v"):
            saved = state.get(label)
            if not isinstance(saved, Mapping) or not all(isinstance(t, torch.Tensor) for t in saved.values()):
                raise ValueError(f"state {label} must map names to tensors")
            moments[label] = {str(key): t.clone(memory_format=torch.contiguous_format) for key, t in saved.items()}
        if set(moments["m"]) != set(moments["v"]):
            raise ValueError("state m and v have different keys")
        self.num_rounds = num_rounds
        self.m, self.v = moments["m"], moments["v"]
        self._broken = None


class FedAdagrad(FedOpt):
    """FedAdagrad: ``v = v + delta^2`` and no momentum (Flower's; the paper's has ``beta_1``)."""

    name = "fedadagrad"
    PARAMS = (_eta(1e-1), _eta_l(1e-1), _tau(1e-3))

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return v + delta**2


class FedAdam(FedOpt):
    """FedAdam: Adam's second moment and Flower's bias-corrected step size (module docstring)."""

    name = "fedadam"
    PARAMS = (
        _eta(1e-1),
        _eta_l(1e-1),
        _beta("beta_1", 0.9, "first-moment (momentum) decay"),
        _beta("beta_2", 0.99, "second-moment decay"),
        _tau(1e-3),
    )

    def step_size(self, server_round: int) -> float:
        exponent = server_round + 1.0
        return self.eta * math.sqrt(1 - self.beta_2**exponent) / (1 - self.beta_1**exponent)

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return self.beta_2 * v + (1 - self.beta_2) * delta**2


class FedYogi(FedOpt):
    """FedYogi: the second moment moves towards ``delta^2`` by at most ``(1 - beta_2) delta^2``."""

    name = "fedyogi"
    PARAMS = (
        _eta(1e-2),
        _eta_l(0.0316),
        _beta("beta_1", 0.9, "first-moment (momentum) decay"),
        _beta("beta_2", 0.99, "second-moment decay"),
        _tau(1e-3),
    )

    def second_moment(self, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return v - (1.0 - self.beta_2) * delta**2 * torch.sign(v - delta**2)
