"""training_throughput: the training engine (``workers.training.engine.train``) against a bare
PyTorch loop on the same model, data, batch size, optimizer and threads, in the same run.

Two workloads: an MLP on scikit-learn's breast-cancer table and the small CNN on scikit-learn's
digits (8x8 images, packed into a zip and prepared the way an image dataset is). The engine does
what a job does minus the platform (no database, no checkpoints): seeded epoch permutations,
deterministic mode, the loss-sum normalisation, the lr scheduler, per-epoch evaluation on the
validation split and metrics. The bare loop is what a competent user writes: shuffle each epoch,
forward, loss, backward, step, with the same optimizer settings, and at each epoch end the same
evaluation call (``engine.evaluate``: validation loss and the task's metrics).

Both timers include building the model and the optimizer (``train`` does both). The headline ratio
excludes evaluation from both sides: each side's wall time less the time spent in its evaluation
calls (``TrainResult.eval_seconds`` for the engine). Evaluating also evicts the training working set
from the caches, which slows the next steps a little; both sides pay that, so it stays in both. The
ratio with evaluation included on both sides is reported next to it, in wall time and in CPU time
(``time.process_time``: one thread, so CPU time is the run's own work without the time the shared
machine's scheduler gave to other processes; the least noisy figure here). Samples/s counts training samples; runs
alternate (engine first in even rounds, bare first in odd ones). The machine is shared and its load
comes in bursts longer than a run, so the ratio is the median of the REPEATS per-round ratios (each
an engine run against the bare run next to it); the ratio of the median rates is reported too.
"""

from __future__ import annotations

import io
import statistics
import time
import zipfile
from typing import Any

from bench.common import log, write_result

NAME = "training_throughput"
REPEATS = 15
TARGET_RATIO = 0.95


def _workloads(quick: bool) -> list[tuple[str, Any, Any]]:
    import pyarrow as pa
    from PIL import Image
    from sklearn.datasets import load_breast_cancer, load_digits

    from workers.schema import Column, DatasetSchema
    from workers.training.data import prepare_images, prepare_tabular
    from workers.training.spec import ModelSpec, OptimizerSpec, TrainSpec

    frame = load_breast_cancer(as_frame=True).frame
    table = pa.Table.from_pandas(frame, preserve_index=False)
    cols = [Column(c, "float") for c in frame.columns if c != "target"] + [Column("target", "integer", "label")]
    schema = DatasetSchema(columns=cols, label="target", task="binary_classification")
    mlp = TrainSpec(
        model=ModelSpec("mlp", {"hidden": [64, 64]}),
        optimizer=OptimizerSpec("adamw", lr=1e-3),
        epochs=10 if quick else 60,
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
        epochs=2 if quick else 6,
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


def _bare(spec: Any, prepared: Any) -> tuple[float, float, float]:
    """(samples/s without evaluation, samples/s with it, samples per CPU second with it) of the
    plainest loop: same model, optimizer settings and batches, and at each epoch end the same
    evaluation call as the engine's."""
    import torch
    import torch.nn.functional as F

    from workers.training.engine import evaluate, resolve_metrics
    from workers.training.models import build

    torch.set_num_threads(spec.num_threads)
    torch.manual_seed(spec.seed)
    o = spec.optimizer
    x, y = prepared.x_train, prepared.y_train
    n, bs = len(x), spec.batch_size
    g = torch.Generator().manual_seed(spec.seed)
    classification = prepared.is_classification
    names, device = resolve_metrics(spec, prepared), torch.device("cpu")
    eval_seconds = 0.0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    model = build(spec.model.name, spec.model.params, prepared.input_info)
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    for _epoch in range(spec.epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            out = model(x[idx])
            loss = F.cross_entropy(out, y[idx]) if classification else F.mse_loss(out.squeeze(-1), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        t_eval = time.perf_counter()
        evaluate(model, prepared, names, device)
        eval_seconds += time.perf_counter() - t_eval
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - cpu0
    return n * spec.epochs / (seconds - eval_seconds), n * spec.epochs / seconds, n * spec.epochs / cpu_seconds


def _engine(spec: Any, prepared: Any) -> tuple[float, float, float, dict[str, float]]:
    """(samples/s without evaluation, samples/s with it, samples per CPU second with it, final
    metrics) of one ``train`` call."""
    from workers.training.engine import NullSink, train

    assert spec.optimizer.name == "adamw", "the bare loop builds AdamW"
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    result = train(spec, prepared, NullSink())
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    samples = len(prepared.x_train) * spec.epochs
    return samples / (seconds - result.eval_seconds), samples / seconds, samples / cpu, result.final_metrics


def run(ctx: Any) -> dict[str, Any]:
    opts = ctx.opts
    per: dict[str, Any] = {}
    ratios = []
    for name, spec, prepared in _workloads(opts.quick):
        _bare(spec, prepared)  # warm-up (allocator, kernels, first-call initialisation)
        _engine(spec, prepared)
        eng_s: list[float] = []
        eng_eval_s: list[float] = []
        bare_s: list[float] = []
        bare_eval_s: list[float] = []
        cpu_ratios: list[float] = []
        metrics: dict[str, float] = {}
        for rnd in range(REPEATS):
            cpu_rates: dict[str, float] = {}
            for which in ("engine", "bare") if rnd % 2 == 0 else ("bare", "engine"):
                if which == "engine":
                    rate, rate_with_eval, cpu_rates[which], metrics = _engine(spec, prepared)
                    eng_s.append(rate)
                    eng_eval_s.append(rate_with_eval)
                else:
                    rate, rate_with_eval, cpu_rates[which] = _bare(spec, prepared)
                    bare_s.append(rate)
                    bare_eval_s.append(rate_with_eval)
            cpu_ratios.append(cpu_rates["engine"] / cpu_rates["bare"])
        eng, bare = statistics.median(eng_s), statistics.median(bare_s)
        eng_eval, bare_eval = statistics.median(eng_eval_s), statistics.median(bare_eval_s)
        round_ratios = [e / b for e, b in zip(eng_s, bare_s, strict=True)]
        paired = statistics.median(round_ratios)
        with_eval = statistics.median(e / b for e, b in zip(eng_eval_s, bare_eval_s, strict=True))
        ratios.append(paired)
        per[name] = {
            "engine_samples_per_s": round(eng, 1),
            "bare_samples_per_s": round(bare, 1),
            "ratio": round(paired, 3),
            "ratio_of_medians": round(eng / bare, 3),
            "ratio_min_max_of_rounds": [round(min(round_ratios), 3), round(max(round_ratios), 3)],
            "engine_with_eval_samples_per_s": round(eng_eval, 1),
            "bare_with_eval_samples_per_s": round(bare_eval, 1),
            "ratio_with_eval": round(with_eval, 3),
            "cpu_ratio_with_eval": round(statistics.median(cpu_ratios), 3),
            "train_rows": len(prepared.x_train),
            "val_rows": len(prepared.x_val),
            "epochs": spec.epochs,
            "batch_size": spec.batch_size,
            "val_accuracy": round(metrics.get("val_accuracy", float("nan")), 4),
        }
        log(
            f"{NAME}: {name} engine {eng:,.0f} vs bare {bare:,.0f} samples/s (median of per-round ratios "
            f"{paired:.3f}, ratio of medians {eng / bare:.3f}; with evaluation {with_eval:.3f}, in CPU time "
            f"{statistics.median(cpu_ratios):.3f})"
        )
    worst = min(ratios)
    first = next(iter(per.values()))
    return write_result(
        NAME,
        unit="samples/s",
        value=first["engine_samples_per_s"],
        baseline=(
            "a bare PyTorch loop: same model, data, batch size, optimizer settings, threads (1) and per-epoch "
            "evaluation call; evaluation time excluded from both sides"
        ),
        baseline_value=first["bare_samples_per_s"],
        ratio=worst,
        target=f"engine / bare >= {TARGET_RATIO} on every workload (median of per-round ratios; worst shown)",
        command=opts.command,
        met=worst >= TARGET_RATIO,
        workloads=per,
        runs=REPEATS,
        statistic="median (ratio: median of per-round ratios)",
        evaluation="both sides evaluate at each epoch end with engine.evaluate; value/ratio exclude the time "
        "spent in it on both sides, ratio_with_eval includes it on both",
        timed="whole train() call vs bare loop incl. building model and optimizer",
        quick=opts.quick,
    )
