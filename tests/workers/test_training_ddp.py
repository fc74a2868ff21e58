"""Data-parallel training: 2 CPU processes (gloo) equal single-process training with the same
global batch. Tolerance: max |Δweight| < 1e-5 — the only difference is float summation order
(the all-reduce adds two shard sums instead of one batch sum), on a small fp32 MLP with SGD."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pyarrow as pa
from sklearn.datasets import load_breast_cancer

from workers.schema import Column, DatasetSchema
from workers.training.data import prepare_tabular
from workers.training.distributed import choose_backend, run_ddp
from workers.training.engine import NullSink, train
from workers.training.spec import ModelSpec, OptimizerSpec, TrainSpec

TOLERANCE = 1e-5


def test_two_gloo_ranks_match_single_process(tmp_path: Path) -> None:
    d = load_breast_cancer()
    cols = {f"f{i}": d.data[:, i] for i in range(d.data.shape[1])}
    cols["y"] = d.target.astype(np.int64)
    table = pa.table(cols)
    schema = DatasetSchema(
        [Column(f"f{i}", "float") for i in range(d.data.shape[1])] + [Column("y", "integer", "label")],
        label="y",
        task="binary_classification",
    )
    spec = TrainSpec(
        model=ModelSpec("mlp", {"hidden": [16], "dropout": 0.0}),  # no dropout: ranks' RNGs differ
        optimizer=OptimizerSpec("sgd", lr=0.05, momentum=0.9),
        epochs=3,
        batch_size=30,  # global; 15 per rank; 455 train rows -> a short last batch of 5 (3 + 2)
        grad_accum_steps=2,
        seed=3,
        device="cpu",
    )
    assert choose_backend(spec, 2) == "gloo"
    factory = functools.partial(prepare_tabular, table, schema, spec)
    single = train(spec, factory(), NullSink())
    ddp = run_ddp(spec, factory, 2, backend="gloo", init_method=(tmp_path / "rendezvous").as_uri())
    assert ddp.status == "completed" and ddp.steps == single.steps and ddp.samples_seen == single.samples_seen
    diff = max(float((single.model_state[k] - ddp.model_state[k]).abs().max()) for k in single.model_state)
    print(f"ddp max abs weight diff {diff:.3g}")
    assert diff < TOLERANCE, diff
    assert abs(ddp.final_metrics["val_accuracy"] - single.final_metrics["val_accuracy"]) <= 1 / len(factory().y_val)
