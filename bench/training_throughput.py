"""training_throughput: the training engine (``workers.training.engine.train``) against a bare
PyTorch loop on the same model, data, batch size, optimizer and threads, in the same run.

Two workloads: an MLP on scikit-learn's breast-cancer table and the small CNN on scikit-learn's
digits (8x8 images, packed into a zip and prepared the way an image dataset is). The engine does
what a job does minus the platform (no database, no checkpoints): seeded epoch permutations,
the loss-sum normalisation, per-epoch evaluation on the validation split and metrics. The bare loop
only trains. Samples/s counts training samples; runs alternate, median of REPEATS.
"""

from __future__ import annotations

import io
import statistics
import time
import zipfile
from typing import Any

from bench.common import log, write_result

NAME = "training_throughput"
REPEATS = 3
TARGET_RATIO = 0.95


def _workloads(quick: bool) -> list[tuple[str, Any, Any]]:
    import pyarrow as pa
    from PIL import Image
    from sklearn.datasets import load_breast_cancer, load_digits

    from workers.schema import Column, DatasetSchema
    from workers.training.data import prepare_images, prepare_tabular
    from workers.training.spec import ModelSpec, OptimizerSpec, TrainSpec

    epochs = 5 if quick else 20
    frame = load_breast_cancer(as_frame=True).frame
    table = pa.Table.from_pandas(frame, preserve_index=False)
    cols = [Column(c, "float") for c in frame.columns if c != "target"] + [Column("target", "integer", "label")]
    schema = DatasetSchema(columns=cols, label="target", task="binary_classification")
    mlp = TrainSpec(
        model=ModelSpec("mlp", {"hidden": [64, 64]}),
        optimizer=OptimizerSpec("adamw", lr=1e-3),
        epochs=epochs,
        batch_size=32,
        seed=1,
        log_every_steps=1000,
        num_threads=1,
        device="cpu",
    )
    digits = load_digits()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            png = io.BytesIO()
            Image.fromarray((img * 16).clip(0, 255).astype("uint8"), mode="L").save(png, format="PNG")
            zf.writestr(f"{label}/{i}.png", png.getvalue())
    cnn = TrainSpec(
        model=ModelSpec("cnn_small", {}),
        optimizer=OptimizerSpec("adamw", lr=2e-3),
        epochs=max(2, epochs // 4),
        batch_size=64,
        seed=1,
        log_every_steps=1000,
        num_threads=1,
        device="cpu",
        data=TrainSpec().data.__class__(image_size=8),
    )
    buf.seek(0)
    return [
        ("mlp_breast_cancer", mlp, prepare_tabular(table, schema, mlp)),
        ("cnn_digits", cnn, prepare_images(buf, cnn)),
    ]


def _bare(spec: Any, prepared: Any) -> float:
    """Samples/s of the plainest loop: same model, optimizer, batches; no evaluation."""
    import torch
    import torch.nn.functional as F

    from workers.training.models import build

    torch.set_num_threads(spec.num_threads)
    torch.manual_seed(spec.seed)
    model = build(spec.model.name, spec.model.params, prepared.input_info)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.optimizer.lr)
    x, y = prepared.x_train, prepared.y_train
    n, bs = len(x), spec.batch_size
    g = torch.Generator().manual_seed(spec.seed)
    classification = prepared.is_classification
    t0 = time.perf_counter()
    for _epoch in range(spec.epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            out = model(x[idx])
            loss = F.cross_entropy(out, y[idx]) if classification else F.mse_loss(out.squeeze(-1), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return n * spec.epochs / (time.perf_counter() - t0)


def _engine(spec: Any, prepared: Any) -> tuple[float, dict[str, float]]:
    from workers.training.engine import NullSink, train

    t0 = time.perf_counter()
    result = train(spec, prepared, NullSink())
    seconds = time.perf_counter() - t0
    return len(prepared.x_train) * spec.epochs / seconds, result.final_metrics


def run(ctx: Any) -> dict[str, Any]:
    opts = ctx.opts
    per: dict[str, Any] = {}
    ratios = []
    for name, spec, prepared in _workloads(opts.quick):
        _bare(spec, prepared)  # warm-up (allocator, kernels)
        eng_s: list[float] = []
        bare_s: list[float] = []
        metrics: dict[str, float] = {}
        for rnd in range(REPEATS):
            for which in ("engine", "bare") if rnd % 2 == 0 else ("bare", "engine"):
                if which == "engine":
                    rate, metrics = _engine(spec, prepared)
                    eng_s.append(rate)
                else:
                    bare_s.append(_bare(spec, prepared))
        eng, bare = statistics.median(eng_s), statistics.median(bare_s)
        ratios.append(eng / bare)
        per[name] = {
            "engine_samples_per_s": round(eng, 1),
            "bare_samples_per_s": round(bare, 1),
            "ratio": round(eng / bare, 3),
            "train_rows": len(prepared.x_train),
            "epochs": spec.epochs,
            "batch_size": spec.batch_size,
            "val_accuracy": round(metrics.get("val_accuracy", float("nan")), 4),
        }
        log(f"{NAME}: {name} engine {eng:,.0f} vs bare {bare:,.0f} samples/s ({eng / bare:.3f})")
    worst = min(ratios)
    first = next(iter(per.values()))
    return write_result(
        NAME,
        unit="samples/s",
        value=first["engine_samples_per_s"],
        baseline="a bare PyTorch loop: same model, data, batch size, optimizer and threads (1), no evaluation",
        baseline_value=first["bare_samples_per_s"],
        ratio=worst,
        target=f"engine / bare >= {TARGET_RATIO} on every workload (worst shown)",
        command=opts.command,
        met=worst >= TARGET_RATIO,
        workloads=per,
        runs=REPEATS,
        statistic="median",
        quick=opts.quick,
    )
