"""Export a trained model for inference elsewhere (TorchScript, ONNX) and predict in batches.

* :func:`export_torchscript` traces the model (eval mode, no autograd) and returns the
  ``torch.jit.save`` bytes: one file that ``torch.jit.load`` or libtorch (C++) runs without this
  code. The trace records shapes symbolically, so any batch size works. Tracing records one
  execution path; the registry's models have no data-dependent control flow, and the tests compare
  every architecture's export with PyTorch on other batch sizes and paddings.
* :func:`export_onnx` uses ``torch.onnx``'s ``torch.export``-based exporter (the default since
  PyTorch 2.9; it needs ``onnx`` and ``onnxscript``, both pinned dependencies) and marks dimension 0
  of every input and output as the dynamic ``batch``. The legacy TorchScript-based exporter is
  deprecated and slated for removal, so it is not used. Inputs are named ``input`` (``input_0``,
  ``input_1``... for several), the output ``output``; models larger than 2 GB are not supported
  (ONNX keeps them in external files).
* :func:`predict_batch` runs an ``nn.Module`` or a loaded TorchScript module over inputs in chunks
  and returns class probabilities, or regression values in the label's units when given the
  encoders stored with the model.

Both artifacts are for download and edge runtimes. TorchScript files embed pickles, so the model
registry never accepts one back (``weights.refuse_pickle``); only run ``torch.jit.load`` on files
this platform produced.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import torch
from torch import Tensor, nn

from workers.durable import write_atomic

Inputs: TypeAlias = Tensor | tuple[Tensor, ...]
Destination: TypeAlias = str | os.PathLike[str] | BinaryIO | None
ONNX_OPSET = 18
MIN_ONNX_OPSET = 18  # the torch.export-based exporter's floor
MAX_ONNX_OPSET = 23
MAX_BATCH = 1 << 20


def export_torchscript(model: nn.Module, example_inputs: Inputs, out: Destination = None) -> bytes:
    """Trace ``model`` on ``example_inputs``; return the TorchScript bytes and write them to ``out`` if given.

    The model's training mode is restored afterwards. ``out`` is a path (written atomically) or a
    binary file object (written at its position).
    """
    args = _as_tuple(example_inputs)
    with _eval(model), warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but it is still the portable
        # single-file format torch.jit.load (and libtorch in C++) reads.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        # Tracer warnings flag Python-side branches on tensor values (nn.TransformerEncoder's
        # fast-path checks); the branch taken does not depend on the batch (tested per model).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model, args)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    data = buffer.getvalue()
    _write(out, data)
    return data


def export_onnx(
    model: nn.Module, example_inputs: Inputs, out: Destination = None, *, opset: int = ONNX_OPSET, optimize: bool = True
) -> bytes:
    """Export ``model`` to ONNX with a dynamic batch dimension; return the bytes and write them to ``out`` if given.

    ``example_inputs`` need a batch of at least 2: the exporter specialises a dimension of size 1.
    ``optimize`` runs onnxscript's graph optimiser (constant folding, fusions; a smaller file that
    edge runtimes load faster); off, the export takes about a third of the time and ONNX Runtime
    still optimises the graph when it loads it.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_ONNX_OPSET <= opset <= MAX_ONNX_OPSET:
        raise ValueError(f"opset must be an integer from {MIN_ONNX_OPSET} to {MAX_ONNX_OPSET}.")
    args = _as_tuple(example_inputs)
    if any(a.dim() == 0 or a.shape[0] < 2 for a in args):
        raise ValueError("Example inputs need a batch dimension of at least 2 (size 1 would be specialised).")
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    names = ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    with _eval(model), _quiet_onnx_exporter():
        program = torch.onnx.export(
            model,
            args,
            input_names=names,
            output_names=["output"],
            dynamic_shapes=tuple({0: batch} for _ in args),
            opset_version=opset,
            dynamo=True,
            optimize=optimize,
            verbose=False,
        )
        assert program is not None
        data = program.model_proto.SerializeToString()
    _write(out, data)
    return data


def predict_batch(
    model: nn.Module,
    inputs: Tensor,
    *,
    encoders: Mapping[str, Any] | None = None,
    batch_size: int = 1024,
) -> Tensor:
    """Outputs of ``model`` on ``inputs`` (already encoded, e.g. by ``data.encode_text``), on the CPU.

    Classification (the default, or when ``encoders["label"]["kind"] == "classes"``): softmax
    probabilities ``(n, n_classes)`` in float32, columns in the order of ``encoders["label"]["classes"]``.
    Regression (``kind == "regression"``): values ``(n,)`` in float64, de-standardised with the
    label's train mean and std. The model runs in eval mode without autograd, ``batch_size`` rows at a
    time, on the device of its parameters; its training mode is restored afterwards.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("batch_size must be a positive integer.")
    label = dict(encoders.get("label") or {}) if encoders is not None else {}
    regression = label.get("kind") == "regression"
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    outs: list[Tensor] = []
    with _eval(model):
        for i in range(0, len(inputs), batch_size):
            outs.append(model(inputs[i : i + batch_size].to(device)).float().cpu())
    if not outs:
        return torch.zeros((0,), dtype=torch.float64) if regression else torch.zeros((0, 0))
    out = torch.cat(outs)
    if regression:
        return out.reshape(-1).double() * float(label.get("std", 1.0)) + float(label.get("mean", 0.0))
    return torch.softmax(out, dim=1)


# --- helpers -------------------------------------------------------------------------------------------
def _as_tuple(example_inputs: Inputs) -> tuple[Tensor, ...]:
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not args or not all(isinstance(a, Tensor) for a in args):
        raise TypeError("example_inputs must be a tensor or a tuple of tensors.")
    return args


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Silence the exporter's logging of optional ops (torchvision absent) and its internal deprecations."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Deprecations inside torch.export/onnxscript (pytree internals) are not the caller's to act on.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _write(out: Destination, data: bytes) -> None:
    if out is None:
        return
    if isinstance(out, str | os.PathLike):
        write_atomic(Path(out), data, mode=0o644)
    else:
        out.write(data)
        out.flush()


__all__ = ["ONNX_OPSET", "export_onnx", "export_torchscript", "predict_batch"]
