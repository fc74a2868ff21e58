"""TorchScript and ONNX export of every registry architecture, and batch prediction.

Each export is traced/exported on a batch of 2 and compared with the PyTorch model on batches of 1
and 5 (dynamic batch), through ``torch.jit.load`` and ONNX Runtime: max abs diff < 1e-4.
Pure tests: no database, no Django."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from workers.training.export import export_onnx, export_torchscript, predict_batch
from workers.training.models import available, build, minilm

TOLERANCE = 1e-4


def _ids(vocab: int, length: int) -> Callable[[int], torch.Tensor]:
    def make(batch: int) -> torch.Tensor:
        ids = torch.randint(2, vocab, (batch, length))
        for r in range(batch):  # rows with different amounts of padding (none to 9 of 12)
            ids[r, length - (r * 3 % length) :] = 0
        return ids

    return make


def _minilm_ids(batch: int) -> torch.Tensor:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "again"]
    return minilm.tokenizer().encode([" ".join(words[: 1 + r * 2]) for r in range(batch)], 16)


TEXT_INFO = {"vocab_size": 40, "pad_id": 0, "max_len": 12, "n_outputs": 3}
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], Callable[[int], torch.Tensor]]] = {
    "logistic_regression": ({}, {"n_features": 6, "n_outputs": 3}, lambda b: torch.randn(b, 6)),
    "mlp": ({"hidden": [16, 8], "dropout": 0.2}, {"n_features": 6, "n_outputs": 1}, lambda b: torch.randn(b, 6)),
    "cnn_small": (
        {"width": 4, "dropout": 0.1},
        {"channels": 1, "image_size": 16, "n_outputs": 4},
        lambda b: torch.randn(b, 1, 16, 16),
    ),
    "text_bag": ({"dim": 8}, TEXT_INFO, _ids(40, 12)),
    "text_transformer": ({"dim": 16, "heads": 2, "layers": 2, "dropout": 0.1}, TEXT_INFO, _ids(40, 12)),
    "minilm": ({"dropout": 0.1}, {**TEXT_INFO, "vocab_size": 30522, "max_len": 16, "tokenizer": "minilm"}, _minilm_ids),
}


def test_every_architecture_is_covered() -> None:
    assert set(CASES) == set(available())


def _model(name: str) -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    params, info, make = CASES[name]
    torch.manual_seed(0)
    model = build(name, params, info)
    model.train()  # export must switch to eval (dropout off) and back
    return model, make


def _reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = model(x).numpy()
    model.train()
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_torchscript_matches_pytorch(name: str) -> None:
    model, make = _model(name)
    data = export_torchscript(model, make(2))
    assert model.training
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        loaded = torch.jit.load(io.BytesIO(data))
    for batch in (1, 5):
        x = make(batch)
        with torch.no_grad():
            got = loaded(x).numpy()
        assert np.abs(got - _reference(model, x)).max() < TOLERANCE


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_matches_pytorch(name: str) -> None:
    model, make = _model(name)
    # The optimiser is tested once (mlp); off elsewhere, it saves two thirds of the export time.
    data = export_onnx(model, make(2), optimize=name == "mlp")
    assert model.training
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert session.get_inputs()[0].shape[0] == "batch"
    for batch in (1, 5):
        x = make(batch)
        (got,) = session.run(["output"], {"input": x.numpy()})
        assert got.shape[0] == batch
        assert np.abs(got - _reference(model, x)).max() < TOLERANCE


def test_exports_write_to_paths_and_files(tmp_path: Path) -> None:
    model, make = _model("logistic_regression")
    buffer = io.BytesIO()
    assert export_torchscript(model, make(2), buffer) == buffer.getvalue()
    data = export_onnx(model, make(2), tmp_path / "m.onnx", opset=20, optimize=False)
    assert (tmp_path / "m.onnx").read_bytes() == data
    assert ort.InferenceSession(str(tmp_path / "m.onnx")).get_inputs()[0].name == "input"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left


def test_export_refuses_bad_arguments() -> None:
    model, make = _model("logistic_regression")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, make(2), opset=11)
    with pytest.raises(ValueError, match="at least 2"):
        export_onnx(model, make(1))
    with pytest.raises(TypeError, match="tensor"):
        export_torchscript(model, [make(2)])  # type: ignore[arg-type]


def test_predict_batch() -> None:
    model, make = _model("cnn_small")
    x = make(7)
    probs = predict_batch(model, x, batch_size=3)
    assert model.training and probs.shape == (7, 4) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(7))
    torch.testing.assert_close(probs, torch.softmax(torch.from_numpy(_reference(model, x)), dim=1))
    encoders = {"label": {"kind": "classes", "classes": ["a", "b", "c", "d"]}}
    torch.testing.assert_close(predict_batch(model, x, encoders=encoders), probs)

    reg, make_reg = _model("mlp")
    xr = make_reg(5)
    values = predict_batch(reg, xr, encoders={"label": {"kind": "regression", "mean": 10.0, "std": 2.0}})
    expected = torch.from_numpy(_reference(reg, xr)).reshape(-1).double() * 2.0 + 10.0
    assert values.shape == (5,) and values.dtype == torch.float64
    torch.testing.assert_close(values, expected)
    assert predict_batch(reg, xr[:0], encoders={"label": {"kind": "regression"}}).shape == (0,)
    with pytest.raises(ValueError, match="batch_size"):
        predict_batch(model, x, batch_size=0)
