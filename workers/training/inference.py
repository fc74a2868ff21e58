"""Serving a registered model version: rebuild it from spec + input info + safetensors weights,
encode raw rows with the encoders fitted at training time, predict, and export for the edge.

Pure (no Django): the platform's batch-predict and export routes and the edge agent share it.
Inputs per kind:

* ``tabular``: a list of objects, one per row, keyed by the training feature columns (extra keys
  are ignored; a missing feature column is an error; null means missing);
* ``text``: a list of strings, or of objects keyed by the training text columns;
* ``image``: a list of encoded image files (PNG/JPEG bytes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from torch import nn

from workers.training.data import DataError, encode_images, encode_tabular, encode_text
from workers.training.models import build
from workers.training.spec import TrainSpec
from workers.training.weights import load_weights

KINDS = ("tabular", "text", "image")


@dataclass
class LoadedModel:
    spec: TrainSpec
    kind: str
    encoders: dict[str, Any]
    input_info: dict[str, Any]
    model: nn.Module

    @property
    def classes(self) -> list[Any] | None:
        label = self.encoders.get("label") or {}
        return list(label["classes"]) if label.get("kind") == "classes" else None


def load_model(
    spec: Mapping[str, Any], encoders: Mapping[str, Any], input_info: Mapping[str, Any], weights: bytes
) -> LoadedModel:
    """The model in eval mode on the CPU, its weights checked (safetensors only, never pickle)."""
    parsed = TrainSpec.from_dict(dict(spec))
    kind = str(input_info.get("kind") or encoders.get("kind") or "tabular")
    if kind not in KINDS:
        raise DataError(f"Unknown input kind {kind!r}.")
    model = build(parsed.model.name, dict(parsed.model.params), dict(input_info))
    tensors, _meta = load_weights(weights)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shapes that do not fit (the error names the tensors, not values)
        raise DataError(f"The weights do not fit the architecture: {str(exc)[:300]}") from exc
    if missing or unexpected:
        raise DataError(
            f"The weights do not fit the architecture (missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]})."
        )
    model.eval()
    return LoadedModel(parsed, kind, dict(encoders), dict(input_info), model)


def encode_rows(loaded: LoadedModel, rows: Sequence[Any]) -> torch.Tensor:
    """Raw rows to the model's input tensor, exactly as at training time."""
    if loaded.kind == "tabular":
        if not all(isinstance(r, Mapping) for r in rows):
            raise DataError("Tabular rows must be objects keyed by column name.")
        names = [c["name"] for c in loaded.encoders["columns"]]
        missing = sorted({n for r in rows for n in names if n not in r})
        if missing:
            raise DataError(f"Rows lack the feature columns {missing[:10]}.")
        table = pa.table({n: _column([r[n] for r in rows], loaded.encoders, n) for n in names})
        return encode_tabular(table, loaded.encoders)
    if loaded.kind == "text":
        columns = list(loaded.encoders.get("columns") or [])
        texts: list[str | None] = []
        for r in rows:
            if isinstance(r, str):
                texts.append(r)
            elif isinstance(r, Mapping):
                parts = [r.get(c) for c in columns]
                if any(p is not None and not isinstance(p, str) for p in parts):
                    raise DataError("Text columns must hold strings.")
                texts.append(" \n ".join(p for p in parts if p))
            else:
                raise DataError("Text rows must be strings or objects keyed by the text columns.")
        return encode_text(texts, loaded.encoders)
    if not all(isinstance(r, bytes | bytearray) for r in rows):
        raise DataError("Image rows must be encoded image files.")
    try:
        return encode_images([bytes(r) for r in rows], loaded.encoders)
    except (OSError, ValueError) as exc:
        raise DataError(f"An image could not be decoded: {type(exc).__name__}.") from exc


def _column(values: list[Any], encoders: Mapping[str, Any], name: str) -> pa.Array:
    spec = next(c for c in encoders["columns"] if c["name"] == name)
    try:
        if spec["encoding"] == "onehot":
            return pa.array([None if v is None else str(v) for v in values], pa.string())
        if spec["type"] == "boolean":
            return pa.array(values, pa.bool_())
        if spec["type"] in ("date", "datetime"):
            import datetime as dt

            if spec["type"] == "date":
                return pa.array([None if v is None else dt.date.fromisoformat(str(v)) for v in values], pa.date32())
            return pa.array(
                [None if v is None else dt.datetime.fromisoformat(str(v)) for v in values], pa.timestamp("us")
            )
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    except (TypeError, ValueError, pa.ArrowInvalid) as exc:
        raise DataError(f"Column {name!r}: {exc}") from exc


def predict(loaded: LoadedModel, rows: Sequence[Any]) -> list[dict[str, Any]]:
    """One result per row: ``{"label", "probabilities"}`` (classification) or ``{"value"}``."""
    from workers.training.export import predict_batch

    x = encode_rows(loaded, rows)
    out = predict_batch(loaded.model, x, encoders=loaded.encoders)
    classes = loaded.classes
    if classes is None:
        return [{"value": float(v)} for v in out.tolist()]
    results = []
    for probs in out.tolist():
        best = max(range(len(probs)), key=probs.__getitem__)
        results.append(
            {
                "label": classes[best],
                "probabilities": {str(c): round(p, 6) for c, p in zip(classes, probs, strict=True)},
            }
        )
    return results


def example_input(loaded: LoadedModel, batch: int = 2) -> torch.Tensor:
    """A zero input of the right shape and dtype (for tracing an export)."""
    info = loaded.input_info
    if loaded.kind == "tabular":
        return torch.zeros((batch, int(info["n_features"])), dtype=torch.float32)
    if loaded.kind == "text":
        ids = torch.full((batch, int(info["max_len"])), int(info.get("pad_id", 0)), dtype=torch.int64)
        ids[:, 0] = 1 if int(info.get("pad_id", 0)) != 1 else 2  # at least one real token per row
        return ids
    size = int(info["image_size"])
    return torch.zeros((batch, int(info["channels"]), size, size), dtype=torch.float32)


def export(loaded: LoadedModel, fmt: str) -> bytes:
    """TorchScript or ONNX bytes of the model (inputs: the encoded tensor; outputs: raw logits)."""
    from workers.training import export as exporters

    example = example_input(loaded)
    if fmt == "torchscript":
        return exporters.export_torchscript(loaded.model, example)
    if fmt == "onnx":
        return exporters.export_onnx(loaded.model, example)
    raise ValueError(f"Unknown export format {fmt!r}; one of torchscript, onnx.")
