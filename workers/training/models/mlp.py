"""Multi-layer perceptron for tabular features: Linear-(BatchNorm)-ReLU-Dropout blocks, then a linear head.

``batch_norm`` mixes the rows of a batch, so DP-SGD (per-sample gradients) cannot train it: a
federation or job with DP refuses it by name (Opacus' ModuleValidator).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from workers.training.models import register
from workers.training.models.params import Bool, Float, IntList, Schema

PARAMS: Schema = {
    "hidden": IntList((64, 32), 1, 8192, 16),
    "dropout": Float(0.0, 0.0, 1.0),
    "batch_norm": Bool(False),
}


@register("mlp", params=PARAMS, description="A multilayer perceptron on the encoded tabular features.")
def build(params: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    # ``params`` is resolved against PARAMS by ``build``: types and bounds already hold.
    hidden = [int(h) for h in params["hidden"]]
    dropout = float(params["dropout"])
    layers: list[nn.Module] = []
    width = int(info["n_features"])
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if params["batch_norm"]:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, int(info["n_outputs"])))
    return nn.Sequential(*layers)
