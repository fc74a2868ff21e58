"""workers.training.inference for the kinds the HTTP tests do not train (text, image): a model
rebuilt from spec + input info + safetensors predicts raw rows exactly as the trained module does
on the training-time encoding; bad rows and mismatched weights are DataErrors."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from workers.schema import Column, DatasetSchema
from workers.training.data import DataError, encode_images, encode_text, prepare_images, prepare_text
from workers.training.engine import NullSink, train
from workers.training.inference import encode_rows, load_model, predict
from workers.training.spec import TrainSpec
from workers.training.weights import save_weights


def _weights(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    save_weights(state, buf, {"job": "test"})
    return buf.getvalue()


def _info(prepared: object) -> dict[str, object]:
    return {**prepared.input_info, "kind": prepared.kind, "problem": prepared.problem}  # type: ignore[attr-defined]


def test_text_model_predicts_raw_strings_and_objects() -> None:
    texts = [("good great fine" if i % 2 else "bad awful poor") + f" w{i % 7}" for i in range(80)]
    labels = ["pos" if i % 2 else "neg" for i in range(80)]
    schema = DatasetSchema(
        [Column("note", "text"), Column("y", "category", "label")], label="y", task="text_classification"
    )
    spec = TrainSpec.from_dict({"model": {"name": "text_bag"}, "epochs": 3, "batch_size": 16, "device": "cpu"})
    prepared = prepare_text(pa.table({"note": texts, "y": labels}), schema, spec)
    result = train(spec, prepared, NullSink())
    loaded = load_model(spec.to_dict(), prepared.encoders, _info(prepared), _weights(result.model_state))
    rows = ["good great fine", {"note": "bad awful poor"}]
    x = encode_rows(loaded, rows)
    assert torch.equal(x, encode_text(["good great fine", "bad awful poor"], prepared.encoders))
    out = predict(loaded, rows)
    assert [o["label"] for o in out] == ["pos", "neg"]
    assert all(abs(sum(o["probabilities"].values()) - 1) < 1e-5 for o in out)
    with pytest.raises(DataError):
        encode_rows(loaded, [{"note": 3}])
    with pytest.raises(DataError):
        encode_rows(loaded, [7])


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_model_predicts_encoded_files_and_refuses_garbage() -> None:
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        for i in range(40):
            label = "dark" if i % 2 else "light"
            zf.writestr(f"{label}/{i}.png", _png(20 + i if i % 2 else 230 - i))
    spec = TrainSpec.from_dict(
        {"model": {"name": "cnn_small"}, "epochs": 4, "batch_size": 8, "device": "cpu", "data": {"image_size": 8}}
    )
    zbuf.seek(0)
    prepared = prepare_images(zbuf, spec)
    result = train(spec, prepared, NullSink())
    loaded = load_model(spec.to_dict(), prepared.encoders, _info(prepared), _weights(result.model_state))
    files = [_png(25), _png(225)]
    assert torch.equal(encode_rows(loaded, files), encode_images(files, prepared.encoders))
    out = predict(loaded, files)
    assert [o["label"] for o in out] == ["dark", "light"]
    with pytest.raises(DataError):
        encode_rows(loaded, [b"not an image"])
    with pytest.raises(DataError):  # weights of another architecture
        load_model(spec.to_dict(), prepared.encoders, {**_info(prepared), "channels": 3}, _weights(result.model_state))
