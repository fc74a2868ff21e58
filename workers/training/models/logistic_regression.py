"""Multinomial logistic regression: one linear layer. The baseline every tabular run should beat."""

from __future__ import annotations

from typing import Any

from torch import nn

from workers.training.models import register


@register(
    "logistic_regression",
    params={},
    description="Logistic (softmax) regression: one linear layer on the encoded features.",
)
def build(params: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    return nn.Linear(int(info["n_features"]), int(info["n_outputs"]))
