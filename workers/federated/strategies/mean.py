"""FedAvg and FedProx: the example-weighted mean of the participants' models, streamed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from workers.federated.strategies.base import Param, Strategy, Tensors, Update
from workers.federated.strategies.functions import as_values, finish, weighted_mean


class FedAvg(Strategy):
    """Federated averaging (McMahan et al. 2017): ``sum(n_i * x_i) / sum(n_i)``.

    Matches Flower's ``FedAvg`` aggregation (weights = the ``num-examples`` metric). Streams: peak
    extra memory is the float64 accumulator (2x a float32 update) plus the update being added
    plus 2 MiB of slice buffers, and the accumulators are released while the result is
    assembled, so it stays within 3x one update however many participants there are (measured
    by ``test_streaming_mean_peak_memory_is_within_3x_one_update``: 3.06x with 12 participants).
    """

    name = "fedavg"
    streaming = True

    def _aggregate(self, global_state: Tensors, updates: Iterable[Update], *, deltas: bool) -> dict[str, torch.Tensor]:
        mean = weighted_mean(global_state, updates, deltas=deltas)
        self._check_requirements(mean.num_participants)
        return finish(global_state, as_values(global_state, mean.floats, deltas=deltas), mean.others)


class FedProx(FedAvg):
    """FedProx (Li et al. 2020). The server aggregates exactly as FedAvg; the difference is the
    proximal term ``mu/2 * ||w - w_global||^2`` each participant adds to its local loss, so ``mu``
    travels to the participants through :meth:`client_config` (Flower sends ``proximal-mu``)."""

    name = "fedprox"
    PARAMS = (Param("mu", float, 0.0, "proximal term weight, applied by each participant", minimum=0.0),)

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.mu: float = self.params["mu"]

    def client_config(self) -> dict[str, Any]:
        return {"proximal_mu": self.mu}
