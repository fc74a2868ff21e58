"""GPU benchmark (``make bench-gpu``, ``python -m bench.gpu``): the training engine against a bare PyTorch
loop on CUDA with bf16 autocast, on two workloads, side by side in the same process.

* ``gpu_cnn_bf16``: the registry's ``cnn_small`` (width 32) on scikit-learn's digits, upscaled from
  8x8 to 64x64 (bilinear) and repeated 16 times with a one-pixel random shift per copy (28,752
  images), so that a batch of 256 gives the GPU real work.
* ``gpu_minilm_bf16``: the registry's ``minilm`` (all-MiniLM-L6-v2, every layer trained) on 16,384
  generated sentences in 4 classes, 64 tokens, batch 128.

Each side builds its model from the registry and gets the same tensors, batch size and AdamW
settings. The engine is ``workers.training.engine.train`` exactly as a job runs it (seeded epoch
permutations, deterministic mode, loss-sum normalisation, lr schedule, per-epoch validation and
metrics), minus the platform; its evaluation time (``TrainResult.eval_seconds``) is excluded from
the headline figure, as in ``training_throughput``. The bare loop is what a competent user writes:
data on the GPU, ``randperm`` each epoch, autocast forward, loss, backward, step. Both timers
include building the model and optimizer and moving the data to the GPU. Figures: training
samples/s, peak ``torch.cuda.max_memory_allocated`` per side, and their ratios; one untimed warm-up
per side, then REPEATS rounds alternating which side goes first, medians. The whole run takes
well under 4 minutes on one H200 (a time budget stops repeating early and records how many ran).

Results go to ``bench/results/gpu_cnn_bf16.json`` and ``gpu_minilm_bf16.json`` in the format of
the other benchmarks (``name, unit, value, baseline, baseline_value, ratio, target, command``,
``target_met``, then details). **Without CUDA it prints why, writes nothing and exits 0**: no
marker file, so a CPU machine never leaves a stale or empty GPU result beside real ones.
``--smoke`` runs the same code on the CPU with tiny sizes (bf16 autocast when the CPU supports
it) to test the benchmark itself; its figures mean nothing, so it writes only where
``--results-dir`` says.

Pure: imports torch and ``workers`` only, never Django.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import RESULT_KEYS, RESULTS_DIR, log

TARGET_RATIO = 0.95
REPEATS = 3
BUDGET_SECONDS = 200.0  # stop starting new rounds after this (the whole run must stay under 4 min)
COMMAND = "make bench-gpu"


@dataclasses.dataclass(frozen=True)
class Sizes:
    cnn_rows: int | None  # digits used (None: all 1,797)
    cnn_image: int
    cnn_copies: int
    cnn_width: int
    cnn_batch: int
    cnn_epochs: int
    text_rows: int
    text_len: int
    text_batch: int
    text_epochs: int
    text_trainable_layers: int | None
    repeats: int


FULL = Sizes(None, 64, 16, 32, 256, 3, 16_384, 64, 128, 2, None, REPEATS)
SMOKE = Sizes(100, 8, 1, 4, 32, 1, 24, 8, 8, 1, 1, 1)


# --- workloads -------------------------------------------------------------------------------------
def cnn_workload(sizes: Sizes, seed: int = 0) -> tuple[Any, Any]:
    """(spec, prepared): digits upscaled and repeated (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from workers.training.data import Prepared, split_indices
    from workers.training.spec import DataSpec, ModelSpec, OptimizerSpec, TrainSpec

    digits = load_digits()
    n_copies = sizes.cnn_copies
    images, target = digits.images[: sizes.cnn_rows], digits.target[: sizes.cnn_rows]
    base = torch.from_numpy(images).float().div(16.0).unsqueeze(1)
    base = F.interpolate(base, size=(sizes.cnn_image, sizes.cnn_image), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed)
    copies = []
    for _ in range(n_copies):
        dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
        copies.append(torch.roll(base, shifts=(dy, dx), dims=(2, 3)))
    x = torch.cat(copies)
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(target).long().repeat(n_copies)
    train_idx, val_idx = split_indices(len(y), 0.1, seed, y.numpy())
    ti, vi = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    info = {"channels": 1, "image_size": sizes.cnn_image, "n_outputs": 10, "n_train": len(ti), "n_val": len(vi)}
    prepared = Prepared(
        kind="image",
        problem="classification",
        x_train=x[ti].contiguous(),
        y_train=y[ti].contiguous(),
        x_val=x[vi].contiguous(),
        y_val=y[vi].contiguous(),
        feature_names=[],
        classes=list(range(10)),
        encoders={},
        input_info=info,
    )
    spec = TrainSpec(
        model=ModelSpec("cnn_small", {"width": sizes.cnn_width}),
        optimizer=OptimizerSpec("adamw", lr=2e-3),
        epochs=sizes.cnn_epochs,
        batch_size=sizes.cnn_batch,
        seed=seed,
        log_every_steps=1000,
        metrics=("accuracy",),
        data=DataSpec(image_size=sizes.cnn_image),
    )
    return spec, prepared


_SUBJECTS = ["my sister", "the new neighbour", "our team", "a friend of mine", "the old man", "everyone", "the kids"]
_TOPICS = {
    "cooking": ["baked fresh bread", "cooked a spicy curry", "tasted the soup", "grilled fish", "made pancakes"],
    "sport": ["ran a marathon", "scored a late goal", "won the tennis final", "swam ten laps", "climbed the wall"],
    "travel": ["caught the night train", "landed in lisbon", "booked a hostel", "crossed the border", "hiked a pass"],
    "music": ["played the cello", "sang in the choir", "tuned the guitar", "wrote a song", "went to a concert"],
}
_TAILS = ["yesterday", "last weekend", "this morning", "after work", "with some friends", "for the first time", ""]


def text_workload(sizes: Sizes, seed: int = 0) -> tuple[Any, Any]:
    """(spec, prepared): generated sentences in four classes, tokenized by the MiniLM tokenizer."""
    import numpy as np
    import pyarrow as pa

    from workers.schema import Column, DatasetSchema
    from workers.training.data import prepare
    from workers.training.spec import DataSpec, ModelSpec, OptimizerSpec, TrainSpec

    rng = np.random.default_rng(seed)
    labels = list(_TOPICS)
    texts, ys = [], []
    for i in range(sizes.text_rows):
        label = labels[i % len(labels)]
        words = [str(rng.choice(_SUBJECTS)), str(rng.choice(_TOPICS[label])), str(rng.choice(_TAILS))]
        # Longer rows on the full run, so sequences fill a good part of the 64 tokens.
        filler = " and then ".join(str(rng.choice(_TOPICS[str(rng.choice(labels))])) for _ in range(i % 4))
        texts.append(" ".join(w for w in [*words, filler] if w).capitalize() + ".")
        ys.append(label)
    table = pa.table({"note": texts, "topic": ys})
    schema = DatasetSchema(
        [Column("note", "text"), Column("topic", "category", "label")], label="topic", task="text_classification"
    )
    params: dict[str, Any] = {"dropout": 0.1}
    if sizes.text_trainable_layers is not None:
        params["trainable_layers"] = sizes.text_trainable_layers
    spec = TrainSpec(
        model=ModelSpec("minilm", params),
        optimizer=OptimizerSpec("adamw", lr=5e-5, weight_decay=0.01),
        epochs=sizes.text_epochs,
        batch_size=sizes.text_batch,
        seed=seed,
        log_every_steps=1000,
        val_fraction=0.1,
        metrics=("accuracy",),
        data=DataSpec(text_max_len=sizes.text_len),
    )
    return spec, prepare(table, schema, spec)


# --- the two sides ---------------------------------------------------------------------------------
def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def bare(spec: Any, prepared: Any, device: Any) -> tuple[float, float | None]:
    """(training samples/s, peak MiB) of the plainest bf16 loop on the same model, data and optimizer settings."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(spec.num_threads)  # as the engine does (CPU threads; a CUDA run uses one)
    try:
        return _bare(spec, prepared, device)
    finally:
        torch.set_num_threads(threads)


def _bare(spec: Any, prepared: Any, device: Any) -> tuple[float, float | None]:
    import torch
    import torch.nn.functional as F

    from workers.training.models import build

    torch.manual_seed(spec.seed)
    o = spec.optimizer
    dtype = torch.bfloat16 if spec.precision == "bf16" else None
    n, bs = len(prepared.x_train), spec.batch_size
    _reset_peak(device)
    t0 = time.perf_counter()
    model = build(spec.model.name, spec.model.params, prepared.input_info).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    x, y = prepared.x_train.to(device), prepared.y_train.to(device)
    model.train()
    for _epoch in range(spec.epochs):
        perm = torch.randperm(n, device=device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = model(x[idx])
            loss = F.cross_entropy(out.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync(device)
    seconds = time.perf_counter() - t0
    return n * spec.epochs / seconds, _peak_mb(device)


def engine(spec: Any, prepared: Any, device: Any) -> tuple[float, float, float | None, dict[str, float]]:
    """(samples/s without evaluation, samples/s with it, peak MiB, final metrics) of one ``train`` call."""
    from workers.training.engine import NullSink, train

    assert spec.optimizer.name == "adamw", "the bare loop builds AdamW"
    _reset_peak(device)
    t0 = time.perf_counter()
    result = train(spec, prepared, NullSink())
    _sync(device)
    seconds = time.perf_counter() - t0
    samples = len(prepared.x_train) * spec.epochs
    eval_seconds = float(getattr(result, "eval_seconds", 0.0))
    return samples / max(seconds - eval_seconds, 1e-9), samples / seconds, _peak_mb(device), result.final_metrics


def measure(
    name: str, spec: Any, prepared: Any, device: Any, *, repeats: int, warm_up: bool, deadline: float
) -> dict[str, Any]:
    """Alternating rounds of engine and bare runs; medians and per-round ratios."""
    if warm_up:  # cuDNN autotuning, kernel caches, allocator
        bare(spec, prepared, device)
        engine(spec, prepared, device)
    eng, eng_eval, bare_s, eng_mem, bare_mem = [], [], [], [], []
    metrics: dict[str, float] = {}
    for rnd in range(repeats):
        if rnd and time.perf_counter() > deadline:
            log(f"gpu: {name}: time budget reached after {rnd} round(s)")
            break
        for side in ("engine", "bare") if rnd % 2 == 0 else ("bare", "engine"):
            if side == "engine":
                rate, rate_eval, mem, metrics = engine(spec, prepared, device)
                eng.append(rate)
                eng_eval.append(rate_eval)
                eng_mem.append(mem)
            else:
                rate, mem = bare(spec, prepared, device)
                bare_s.append(rate)
                bare_mem.append(mem)
    e, b = statistics.median(eng), statistics.median(bare_s)
    round_ratios = [x / y for x, y in zip(eng, bare_s, strict=True)]
    peak_e = max((m for m in eng_mem if m is not None), default=None)
    peak_b = max((m for m in bare_mem if m is not None), default=None)
    log(f"gpu: {name}: engine {e:,.0f} vs bare {b:,.0f} samples/s (x{e / b:.3f}); peak MiB {peak_e} vs {peak_b}")
    return {
        "engine_samples_per_s": e,
        "bare_samples_per_s": b,
        "ratio": e / b,
        "ratio_min_max_of_rounds": [round(min(round_ratios), 3), round(max(round_ratios), 3)],
        "engine_with_eval_samples_per_s": round(statistics.median(eng_eval), 1),
        "ratio_with_eval": round(statistics.median(eng_eval) / b, 3),
        "engine_peak_memory_mib": None if peak_e is None else round(peak_e, 1),
        "bare_peak_memory_mib": None if peak_b is None else round(peak_b, 1),
        "peak_memory_ratio": None if not (peak_e and peak_b) else round(peak_e / peak_b, 3),
        "runs": len(eng),
        "train_rows": len(prepared.x_train),
        "val_rows": len(prepared.x_val),
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "model": spec.model.name,
        "model_params": spec.model.params,
        "val_accuracy": round(float(metrics.get("val_accuracy", math.nan)), 4),
    }


# --- results ----------------------------------------------------------------------------------------
def facts(device: Any) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return out


def result_record(name: str, figures: dict[str, Any], baseline: str, extra: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "unit": "samples/s",
        "value": round(figures["engine_samples_per_s"], 3),
        "baseline": baseline,
        "baseline_value": round(figures["bare_samples_per_s"], 3),
        "ratio": round(figures["ratio"], 3),
        "target": f"engine / bare >= {TARGET_RATIO} (samples/s, bf16 autocast, evaluation excluded); "
        "peak memory reported",
        "command": COMMAND,
        "target_met": figures["ratio"] >= TARGET_RATIO,
        **{k: v for k, v in figures.items() if k not in ("engine_samples_per_s", "bare_samples_per_s", "ratio")},
        **extra,
    }
    assert tuple(data)[: len(RESULT_KEYS)] == RESULT_KEYS
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: tests the code, not the GPU")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help=f"where the JSON results go (default {RESULTS_DIR}; with --smoke, nowhere unless given)",
    )
    parser.add_argument("--budget-seconds", type=float, default=BUDGET_SECONDS, help="stop repeating after this")
    args = parser.parse_args(argv)

    import torch

    started = time.perf_counter()
    if args.smoke:
        device = torch.device("cpu")
        sizes = SMOKE
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        sizes = FULL
    else:
        print(
            "bench.gpu: CUDA is not available on this machine: nothing measured, nothing written "
            "(run `make bench-gpu` on a GPU machine; `--smoke` tests this code on the CPU).",
            flush=True,
        )
        return 0
    results_dir = args.results_dir if args.results_dir is not None or args.smoke else RESULTS_DIR

    from workers.training.engine import bf16_supported

    precision = "bf16" if bf16_supported(device) else "fp32"
    if device.type == "cuda":
        # The engine sets this for deterministic cuBLAS; set it before the first matmul so both sides
        # run under the same cuBLAS workspace configuration.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = True  # both sides; bf16 autocast covers the big matmuls
        torch.backends.cudnn.allow_tf32 = True
    deadline = started + args.budget_seconds
    workloads: list[tuple[str, Callable[[Sizes], tuple[Any, Any]], str]] = [
        ("gpu_cnn_bf16", cnn_workload, "cnn_small on digits upscaled to {s}x{s}, x{c} copies"),
        ("gpu_minilm_bf16", text_workload, "minilm fine-tuning on generated text ({n} rows, {l} tokens)"),
    ]
    written = []
    for name, make, what in workloads:
        spec, prepared = make(sizes)
        device_name = "cuda" if device.type == "cuda" else "cpu"
        spec = dataclasses.replace(spec, precision=precision, device=device_name, num_threads=1)
        spec.validate()
        with warnings.catch_warnings():
            # Deterministic mode on CUDA warns (once per op) about ops without a deterministic kernel.
            warnings.filterwarnings("ignore", message=r".*deterministic.*")
            figures = measure(
                name, spec, prepared, device, repeats=sizes.repeats, warm_up=not args.smoke, deadline=deadline
            )
        description = what.format(s=sizes.cnn_image, c=sizes.cnn_copies, n=sizes.text_rows, l=sizes.text_len)
        extra = {
            "workload": description,
            "precision": precision,
            "smoke": args.smoke,
            "statistic": "median",
            "timed": "whole train() call vs bare loop, incl. building the model and optimizer and moving the data",
            "machine": facts(device),
            "seconds_so_far": round(time.perf_counter() - started, 1),
        }
        baseline = f"a bare PyTorch loop: same model, data, batch size and AdamW settings, {precision} autocast"
        record = result_record(name, figures, baseline, extra)
        if results_dir is not None:
            results_dir.mkdir(parents=True, exist_ok=True)
            path = results_dir / f"{name}.json"
            path.write_text(json.dumps(record, indent=2) + "\n")
            written.append(str(path))
        del prepared
        if device.type == "cuda":
            torch.cuda.empty_cache()
    log(f"gpu: done in {time.perf_counter() - started:.0f} s; wrote {', '.join(written) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
