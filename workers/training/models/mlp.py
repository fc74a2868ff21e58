"""Multi-layer perceptron for tabular features: Linear-ReLU-Dropout blocks, then a linear head."""

from __future__ import annotations

from typing import Any

from torch import nn

from workers.training.models import register, take


@register("mlp")
def build(params: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    p = take(params, {"hidden": [64, 32], "dropout": 0.0})
    hidden = [int(h) for h in p["hidden"]]
    if any(h < 1 or h > 8192 for h in hidden) or len(hidden) > 16:
        raise ValueError("hidden: up to 16 layers of 1..8192 units.")
    dropout = float(p["dropout"])
    if not 0 <= dropout < 1:
        raise ValueError("dropout must be in [0, 1).")
    layers: list[nn.Module] = []
    width = int(info["n_features"])
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, int(info["n_outputs"])))
    return nn.Sequential(*layers)
