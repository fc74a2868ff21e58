"""Bag-of-embeddings text classifier: mean of token embeddings (padding excluded), then a linear head.

Order-blind but fast and strong on short texts; the sensible first model for text classification.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.training.models import register
from workers.training.models.params import Float, Int, Schema

PARAMS: Schema = {"dim": Int(64, 1, 4096), "dropout": Float(0.0, 0.0, 1.0)}


class TextBag(nn.Module):
    def __init__(self, vocab_size: int, dim: int, n_outputs: int, pad_id: int, dropout: float) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_outputs)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).unsqueeze(-1).to(self.embed.weight.dtype)
        summed = (self.embed(ids) * mask).sum(dim=1)
        mean = summed / mask.sum(dim=1).clamp(min=1.0)
        return self.head(self.drop(mean))


@register(
    "text_bag",
    params=PARAMS,
    inputs="text",
    description="A bag of word embeddings, mean-pooled, with a linear head: fast on short texts.",
)
def build(params: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    p = params  # resolved against PARAMS by ``build``
    return TextBag(
        int(info["vocab_size"]), int(p["dim"]), int(info["n_outputs"]), int(info["pad_id"]), float(p["dropout"])
    )
