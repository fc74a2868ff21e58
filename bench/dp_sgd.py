"""dp_sgd: the engine's DP-SGD path (``train(..., privacy=DPConfig)``) against Opacus' own loop on
the same model, data, batch size, optimizer, noise and clipping, in the same run.

Opacus' loop is what its tutorials write: ``PrivacyEngine.make_private`` with Poisson sampling
(its ``DPDataLoader`` over a ``TensorDataset``), then forward, mean loss, backward, ``step`` for
each batch. The engine does the same DP-SGD plus what it always does: seeded per-step batch masks
and noise, the lr scheduler, loss bookkeeping and the accountant history. Both sides build the model
and run ``epochs`` epochs of ``ceil(N / batch_size)`` steps; evaluation is left out of both (the
engine's ``eval_seconds`` is subtracted; Opacus' side does not evaluate). One thread. Runs
alternate; the ratio is the median of per-round ratios (engine samples/s over Opacus').
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from typing import Any

from bench.common import log, write_result

NAME = "dp_sgd"
REPEATS = 7
TARGET_RATIO = 0.8
SIGMA, CLIP, DELTA = 1.0, 1.0, 1e-5


def _workload(quick: bool) -> tuple[Any, Any]:
    import pyarrow as pa
    from sklearn.datasets import load_breast_cancer

    from workers.schema import Column, DatasetSchema
    from workers.training.data import prepare_tabular
    from workers.training.spec import ModelSpec, OptimizerSpec, TrainSpec

    frame = load_breast_cancer(as_frame=True).frame
    table = pa.Table.from_pandas(frame, preserve_index=False)
    cols = [Column(c, "float") for c in frame.columns if c != "target"] + [Column("target", "integer", "label")]
    schema = DatasetSchema(columns=cols, label="target", task="binary_classification")
    spec = TrainSpec(
        model=ModelSpec("mlp", {"hidden": [64, 64]}),
        optimizer=OptimizerSpec("sgd", lr=0.1),
        epochs=3 if quick else 15,
        batch_size=32,
        seed=1,
        log_every_steps=100000,
        num_threads=1,
        device="cpu",
    )
    return spec, prepare_tabular(table, schema, spec)


def _engine(spec: Any, prepared: Any) -> tuple[float, float | None, float]:
    from workers.training.engine import NullSink, train
    from workers.training.privacy import DPConfig

    t0 = time.perf_counter()
    result = train(spec, prepared, NullSink(), privacy=DPConfig(SIGMA, CLIP, DELTA))
    seconds = time.perf_counter() - t0 - result.eval_seconds
    return result.samples_seen / seconds, result.epsilon, result.final_metrics.get("val_accuracy", float("nan"))


def _opacus(spec: Any, prepared: Any) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F
    from opacus import PrivacyEngine

    from workers.training.models import build

    torch.set_num_threads(spec.num_threads)
    torch.manual_seed(spec.seed)
    x, y = prepared.x_train, prepared.y_train
    n = len(x)
    t0 = time.perf_counter()
    model = build(spec.model.name, spec.model.params, prepared.input_info)
    opt = torch.optim.SGD(model.parameters(), lr=spec.optimizer.lr)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=spec.batch_size)
    engine = PrivacyEngine(accountant="rdp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, opt, loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=SIGMA, max_grad_norm=CLIP,
            poisson_sampling=True,
        )  # fmt: skip
        samples = 0
        for _epoch in range(spec.epochs):
            for xb, yb in loader:
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                samples += len(xb)
    seconds = time.perf_counter() - t0
    steps = spec.epochs * math.ceil(n / spec.batch_size)
    history = engine.accountant.history
    assert history, "Opacus' accountant recorded no steps"
    assert sum(h[2] for h in history) == steps, (history, steps)
    return samples / seconds, float(engine.get_epsilon(DELTA))


def run(ctx: Any) -> dict[str, Any]:
    opts = ctx.opts
    spec, prepared = _workload(opts.quick)
    _engine(spec, prepared)  # warm-up
    _opacus(spec, prepared)
    eng_s: list[float] = []
    op_s: list[float] = []
    eps_engine = eps_opacus = acc = float("nan")
    for rnd in range(REPEATS):
        for which in ("engine", "opacus") if rnd % 2 == 0 else ("opacus", "engine"):
            if which == "engine":
                rate, e, acc = _engine(spec, prepared)
                eps_engine = float(e or float("nan"))
                eng_s.append(rate)
            else:
                rate, eps_opacus = _opacus(spec, prepared)
                op_s.append(rate)
    ratio = statistics.median(e / o for e, o in zip(eng_s, op_s, strict=True))
    eng, op = statistics.median(eng_s), statistics.median(op_s)
    log(f"{NAME}: engine {eng:,.0f} vs Opacus {op:,.0f} samples/s (median per-round ratio {ratio:.3f}); "
        f"epsilon engine {eps_engine:.4f}, Opacus {eps_opacus:.4f}")  # fmt: skip
    return write_result(
        NAME,
        unit="samples/s",
        value=eng,
        baseline="Opacus 1.6's own make_private loop (Poisson DPDataLoader), same MLP, data, batch, SGD, noise "
        "and clipping, one thread",
        baseline_value=op,
        ratio=ratio,
        target=f"engine / Opacus >= {TARGET_RATIO} (median of per-round ratios)",
        command=opts.command,
        met=ratio >= TARGET_RATIO,
        runs=REPEATS,
        epochs=spec.epochs,
        train_rows=len(prepared.x_train),
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        epsilon_engine=round(eps_engine, 4),
        epsilon_opacus=round(eps_opacus, 4),
        val_accuracy_engine=round(acc, 4),
        quick=opts.quick,
    )
