"""A tiny transformer encoder trained from scratch: token + learned position embeddings, N layers,
masked mean pooling, linear head. Meant for small private corpora where no pretrained model may be
downloaded; expect it to need more epochs than ``text_bag``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from workers.training.models import register
from workers.training.models.params import Float, Int, Schema

if TYPE_CHECKING:
    from workers.training.spec import TrainSpec

PARAMS: Schema = {
    "dim": Int(64, 1, 2048),
    "heads": Int(4, 1, 64),
    "layers": Int(2, 1, 24),
    "dropout": Float(0.1, 0.0, 1.0),
}


class TextTransformer(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        n_outputs: int,
        pad_id: int,
        dim: int,
        heads: int,
        layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout, batch_first=True, norm_first=True)
        # enable_nested_tensor=False: the nested fast path is inference-only and warns with norm_first.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_outputs)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == self.pad_id
        positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        h = self.encoder(self.embed(ids) + self.pos(positions), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.head(self.norm(pooled))


def check(spec: TrainSpec) -> dict[str, list[str]]:
    """Cross-field: attention splits ``dim`` evenly over ``heads`` (types and bounds: PARAMS)."""
    p = {**{k: v.default for k, v in PARAMS.items()}, **spec.model.params}
    if p["dim"] % p["heads"]:
        return {"model.params.dim": ["dim must be a multiple of heads."]}
    return {}


@register(
    "text_transformer",
    params=PARAMS,
    check=check,
    inputs="text",
    description="A small transformer encoder trained from scratch on the word vocabulary of the data.",
)
def build(params: dict[str, Any], info: dict[str, Any]) -> nn.Module:
    p = params  # resolved against PARAMS by ``build``
    dim, heads = int(p["dim"]), int(p["heads"])
    if dim % heads:
        raise ValueError("dim must be a multiple of heads.")
    return TextTransformer(
        int(info["vocab_size"]),
        int(info["max_len"]),
        int(info["n_outputs"]),
        int(info["pad_id"]),
        dim,
        heads,
        int(p["layers"]),
        float(p["dropout"]),
    )
