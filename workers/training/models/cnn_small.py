"""A small CNN for small images (8x8 digits up to ~64px): two conv blocks then a linear head.

No batch norm on purpose: it keeps data-parallel runs equal to single-process ones and makes the
forward pass independent of the batch composition.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.training.models import register
from workers.training.models.params import Float, Int, Schema

PARAMS: Schema = {"width": Int(16, 1, 512), "dropout": Float(0.0, 0.0, 1.0)}


class CnnSmall(nn.Module):
    def __init__(self, channels: int, size: int, n_outputs: int, width: int, dropout: float) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, width * 2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = max(size // 4, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(width * 2 * side * side, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register(
    "cnn_small",
    params=PARAMS,
    inputs="image",
    description="A small convolutional network for small images: two conv blocks, then a linear head.",
)
def build(params: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    p = params  # resolved against PARAMS by ``build``
    size = int(info["image_size"])
    if size < 4:
        raise ValueError("cnn_small needs images of at least 4x4.")
    return CnnSmall(int(info["channels"]), size, int(info["n_outputs"]), int(p["width"]), float(p["dropout"]))
