"""The training loop: one function, :func:`train`, deterministic and resumable to the bit on CPU.

Why it is built the way it is:

* **Order of samples is a pure function of (seed, epoch).** Each epoch's permutation comes from a
  fresh ``torch.Generator`` seeded with ``seed * 1_000_003 + epoch``, so a resumed run recreates
  it without saving it, and data-parallel ranks agree on it without talking.
* **Checkpoints happen only on optimizer-step boundaries** (every ``checkpoint_every_steps``, at
  each epoch end, and when stopped), where no gradient is half accumulated. A :class:`TrainState`
  then holds everything that influences the future: weights, optimizer and scheduler state, the
  grad-scaler, the python/numpy/torch(/CUDA) RNG states (dropout), the position in the epoch and
  the running epoch loss. It contains tensors and plain Python values only, so it survives
  ``torch.save`` + ``torch.load(weights_only=True)``; resuming gives the same final weights as an
  uninterrupted run (``torch.equal`` on CPU; tested).
* **Loss is a sum over the optimizer step's samples divided by their count** (times the world
  size under DDP, which averages), so gradient accumulation and data parallelism compute the same
  gradient as one big batch, including a short last batch.
* **A warm start is not a resume.** ``init_weights`` (a state dict, e.g. the global model of a
  federated round) is loaded into the freshly built model before the first step, after its keys,
  shapes and dtypes were checked against the model (a clear ``ValueError`` otherwise); optimizer,
  schedule, RNG and position start fresh. A ``resume`` checkpoint, when given, wins: it already
  holds the weights that grew from the warm start.
* **Cancellation is cooperative**: ``should_stop()`` is asked before each optimizer step, so a
  revoked grant stops the run after at most the step in flight.
* **The step path does only what training needs** (measured by ``bench/training_throughput.py``
  against a bare PyTorch loop). Each epoch's permutation is applied once per chunk of rows with
  ``index_select`` and micro-batches are contiguous slices of it, not a gather per batch. The
  per-batch loss stays on the device: the detached sums are queued and added to the (float64)
  running epoch loss in order only when something reads it (a metrics event, a checkpoint, the
  epoch end), so a CUDA run does not wait for the device on every batch and the figures equal a
  per-batch ``float()`` sum exactly. fp32 runs enter no autocast context, single-process runs no
  ``no_sync`` context.

Side effects on the process (a worker runs one job at a time): the global RNGs are seeded,
``torch.set_num_threads`` and deterministic-algorithms mode (without NaN-filling of fresh memory,
see :func:`_run_context`) are set for the run and restored after.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.training import metrics as metrics_mod
from workers.training.data import Prepared
from workers.training.models import build
from workers.training.privacy import BudgetExhausted, DPConfig, DPSession
from workers.training.spec import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    ScheduleSpec,
    SpecError,
    TrainSpec,
    _bare,
)

EVAL_BATCH = 4096
# Rows of the permuted training set gathered at once (about this many bytes per chunk, at least one
# micro-batch): big enough that a gather per micro-batch disappears, small enough not to copy a
# large image set whole.
GATHER_BYTES = 64 << 20
# Queued per-batch loss sums are added up at the latest after this many (bounds the queue when
# metrics are logged rarely and epochs are long).
PENDING_LOSSES = 1024


class ProgressSink(Protocol):
    """Where a run reports. Implementations must be quick: they are called from the training loop."""

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None: ...

    def on_log(self, line: str) -> None: ...

    def on_checkpoint(self, state: TrainState) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...


class NullSink:
    """A sink that discards everything (tests, benchmarks, non-zero DDP ranks). When a sink keeps
    this class's ``on_checkpoint``, the loop does not even build the states it would discard (a
    deep copy of the model and optimizer per checkpoint)."""

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        return None

    def on_log(self, line: str) -> None:
        return None

    def on_checkpoint(self, state: TrainState) -> None:
        return None

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        return None


@dataclass
class TrainState:
    """Everything needed to continue a run exactly; tensors and plain values only (weights_only-safe)."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    scaler_state: dict[str, Any]
    rng: dict[str, Any]
    epoch: int  # the epoch to continue (== epochs done when batch_in_epoch is 0)
    step: int  # optimizer steps done
    batch_in_epoch: int  # next micro-batch index within ``epoch``
    samples_seen: int
    best_metric: float | None
    best_epoch: int
    bad_epochs: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    epoch_loss_sum: float
    epoch_samples: int
    spec_hash: str
    # DP-SGD: the accountant's steps so far, [(noise_multiplier, sample_rate, steps)], so a resumed
    # run composes its ε from where it stopped; empty without DP.
    privacy_history: list[tuple[float, float, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict for ``torch.save``: shallow, since a state the loop emits already holds
        private copies (``dataclasses.asdict`` would deep-copy every tensor again, about a third of
        the cost of saving a small checkpoint)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**data)


@dataclass
class TrainResult:
    status: str  # "completed" | "early_stopped" | "stopped" | "budget_exhausted" (DP: the next step would pass the cap)
    final_metrics: dict[str, float]
    best_metrics: dict[str, float]
    best_epoch: int
    history: list[dict[str, float]]
    steps: int
    epochs: int  # epochs completed
    samples_seen: int
    seconds: float  # wall time of this call (a resumed run counts only its own part)
    samples_per_second: float
    device: str
    spec_hash: str
    model_state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    eval_seconds: float = 0.0  # part of ``seconds`` spent evaluating the validation split
    n_train: int = 0  # training examples (rows of the train split; the weight of this run in an average)
    epsilon: float | None = None  # DP-SGD: ε at the run's delta after all its steps (resumed ones included)
    privacy_history: list[tuple[float, float, int]] = field(default_factory=list)


# --- device, precision, RNG ------------------------------------------------------------------------
def resolve_device(spec: TrainSpec) -> torch.device:
    """CUDA when present and allowed; refuse precisions the device cannot run."""
    cuda = torch.cuda.is_available()
    if spec.device == "cuda" and not cuda:
        raise SpecError("CUDA was requested but is not available.", {"device": ["No CUDA device here."]})
    device = torch.device("cuda") if cuda and spec.device in ("auto", "cuda") else torch.device("cpu")
    if spec.precision == "fp16" and device.type != "cuda":
        raise SpecError(
            "fp16 training needs CUDA.", {"precision": ["fp16 (with GradScaler) runs on CUDA only; use bf16 or fp32."]}
        )
    if spec.precision == "bf16" and not bf16_supported(device):
        raise SpecError("bf16 is not supported here.", {"precision": [f"No bf16 autocast on {device.type}."]})
    return device


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.ones(2, 2) @ torch.ones(2, 2)
        return out.dtype == torch.bfloat16
    except (RuntimeError, AssertionError):
        return False


def capture_rng() -> dict[str, Any]:
    """RNG states as tensors/ints/lists (no numpy arrays) so ``weights_only`` loading accepts them."""
    py = random.getstate()
    npst = np.random.get_state(legacy=True)
    assert isinstance(npst, tuple)
    return {
        "python": [int(py[0]), [int(v) for v in py[1]], py[2]],
        "numpy": [str(npst[0]), [int(v) for v in npst[1]], int(npst[2]), int(npst[3]), float(npst[4])],
        "torch": torch.get_rng_state().clone(),
        "cuda": [s.clone() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    py = rng["python"]
    random.setstate((int(py[0]), tuple(int(v) for v in py[1]), py[2]))
    n = rng["numpy"]
    np.random.set_state((str(n[0]), np.asarray(n[1], dtype=np.uint32), int(n[2]), int(n[3]), float(n[4])))
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of ``epoch``: a pure function of (seed, epoch), identical on every rank."""
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@contextlib.contextmanager
def _run_context(spec: TrainSpec, device: torch.device) -> Iterator[None]:
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(spec.num_threads)
    # CPU kernels all have deterministic versions; on CUDA some ops lack one, so only warn there.
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    # Deterministic mode also NaN-fills every torch.empty by default, which only matters to a program
    # that reads memory it never wrote; the models here do not, and the fill costs about 5% of a
    # small CNN's step on CPU (PyTorch's docs advise turning it off in that case).
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill  # type: ignore[attr-defined]


# For code that runs the spec's model outside ``train`` (a federation site's evaluation): the same
# threads and deterministic mode. Without it a tiny model's forward pass on a many-core worker
# fans out to every core (and spins against the other workers on the machine).
run_context = _run_context


# --- optimisation pieces -------------------------------------------------------------------------
def lr_factor(s: ScheduleSpec, step: int, total_steps: int) -> float:
    """Multiplier of the base lr used for optimizer step ``step`` (0-based)."""
    if step < s.warmup_steps:
        return (step + 1) / (s.warmup_steps + 1)
    k = step - s.warmup_steps
    if s.name == "cosine":
        progress = min(k / max(total_steps - s.warmup_steps, 1), 1.0)
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if s.name == "step":
        return float(s.gamma ** (k // s.step_size))
    return 1.0


def make_optimizer(spec: TrainSpec, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    o = spec.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def resolve_metrics(spec: TrainSpec, prepared: Prepared) -> tuple[str, ...]:
    allowed = CLASSIFICATION_METRICS if prepared.is_classification else REGRESSION_METRICS
    names = spec.metrics or allowed
    wrong = [m for m in names if m not in allowed]
    if wrong:
        raise SpecError(
            "Metrics do not fit the task.", {"metrics": [f"{m!r} is not a {prepared.problem} metric." for m in wrong]}
        )
    es = spec.early_stopping
    if es is not None and _bare(es.metric) not in (*names, "loss"):
        raise SpecError(
            "Early stopping watches a metric the run does not compute.", {"early_stopping.metric": [es.metric]}
        )
    return tuple(names)


def _loss_sum(out: torch.Tensor, y: torch.Tensor, classification: bool) -> torch.Tensor:
    out = out.float()
    if classification:
        return F.cross_entropy(out, y, reduction="sum")
    return F.mse_loss(out.reshape(-1), y, reduction="sum")


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def evaluate(
    model: nn.Module, prepared: Prepared, names: tuple[str, ...], device: torch.device, precision: str = "fp32"
) -> dict[str, float]:
    """Validation loss and metrics (regression metrics in the label's own units)."""
    was_training = model.training
    model.eval()
    outs: list[torch.Tensor] = []
    loss = 0.0
    with torch.no_grad():
        for i in range(0, len(prepared.x_val), EVAL_BATCH):
            xb = prepared.x_val[i : i + EVAL_BATCH].to(device)
            yb = prepared.y_val[i : i + EVAL_BATCH].to(device)
            with _autocast(device, precision):
                out = model(xb)
            loss += float(_loss_sum(out, yb, prepared.is_classification))
            outs.append(out.float().cpu())
    model.train(was_training)
    n = max(len(prepared.x_val), 1)
    result = {"loss": loss / n}
    if not outs:
        return result
    out = torch.cat(outs).double()
    y = prepared.y_val.cpu().numpy()
    if prepared.is_classification:
        result.update(metrics_mod.compute(names, y, torch.softmax(out, dim=1).numpy()))
    else:
        pred = prepared.unscale(out.reshape(-1).numpy())
        result.update(metrics_mod.compute(names, prepared.unscale(y.astype(np.float64)), pred))
    return result


# --- warm start ------------------------------------------------------------------------------------
def check_init_weights(model: nn.Module, weights: Mapping[str, Any]) -> None:
    """``ValueError`` unless ``weights`` is a full state dict of ``model``: the same keys, tensors of
    the same shapes, floating where the model is floating, finite."""
    if not isinstance(weights, Mapping):
        raise ValueError(f"init_weights must be a mapping of parameter names to tensors, not {type(weights).__name__}.")
    expected = model.state_dict()
    problems: list[str] = []
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:5])}{' …' if len(unexpected) > 5 else ''}")
    for key, ref in expected.items():
        value = weights.get(key)
        if value is None or key in missing:
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key}: not a tensor ({type(value).__name__})")
        elif tuple(value.shape) != tuple(ref.shape):
            problems.append(f"{key}: shape {tuple(value.shape)}, the model has {tuple(ref.shape)}")
        elif ref.is_floating_point() != value.is_floating_point():
            problems.append(f"{key}: dtype {value.dtype}, the model has {ref.dtype}")
        elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
            problems.append(f"{key}: not finite (NaN or inf)")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ValueError(f"init_weights do not fit the model {type(model).__name__}: {shown}.")


def load_init_weights(model: nn.Module, weights: Mapping[str, Any]) -> None:
    """Check ``weights`` (:func:`check_init_weights`), then copy them into ``model`` in place."""
    check_init_weights(model, weights)
    with torch.no_grad():
        model.load_state_dict({k: v.detach() for k, v in weights.items()}, strict=True)


# --- the loop ----------------------------------------------------------------------------------------
def train(
    spec: TrainSpec,
    prepared: Prepared,
    sink: ProgressSink,
    *,
    resume: TrainState | None = None,
    init_weights: Mapping[str, torch.Tensor] | None = None,
    should_stop: Callable[[], bool] | None = None,
    proximal_mu: float = 0.0,
    privacy: DPConfig | None = None,
    prior_privacy_history: Sequence[Sequence[float]] = (),
) -> TrainResult:
    """Train ``spec.model`` on ``prepared``; report through ``sink``; return the outcome.

    ``resume`` continues a checkpoint of the same spec (same :meth:`TrainSpec.spec_hash`).
    ``init_weights`` warm-starts a fresh run from a state dict of the same model (every key, same
    shapes; checked, ``ValueError`` naming the mismatches otherwise); ignored when ``resume`` is given.
    ``should_stop`` is polled before every optimizer step; when it returns true the run emits a
    checkpoint and returns with status ``"stopped"``.
    ``proximal_mu`` > 0 adds FedProx's proximal term ``mu/2 * ||w - w_start||^2`` (``w_start``: the
    weights the run started from, i.e. ``init_weights``) to every optimizer step's gradient.
    ``privacy`` trains with DP-SGD (:mod:`workers.training.privacy`): each step is a seeded Poisson
    batch (rate ``batch_size / N``), per-sample gradients clipped and noised by Opacus; fp32, one
    process, no gradient accumulation. The result carries ε and the accountant's history; a step
    that would pass ``privacy.max_epsilon`` is not taken (status ``"budget_exhausted"``).
    ``prior_privacy_history`` is the accountant history of earlier runs on the same rows (a
    federation site's earlier rounds) that this run's ε composes with; a ``resume`` carries its own.
    """
    return _train(
        spec, prepared, sink, resume=resume, init_weights=init_weights, should_stop=should_stop,
        proximal_mu=proximal_mu, privacy=privacy, prior_privacy_history=prior_privacy_history,
    )  # fmt: skip


def _train(
    spec: TrainSpec,
    prepared: Prepared,
    sink: ProgressSink,
    *,
    resume: TrainState | None = None,
    init_weights: Mapping[str, torch.Tensor] | None = None,
    should_stop: Callable[[], bool] | None = None,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
    proximal_mu: float = 0.0,
    privacy: DPConfig | None = None,
    prior_privacy_history: Sequence[Sequence[float]] = (),
) -> TrainResult:
    spec.validate()
    device = device or resolve_device(spec)
    names = resolve_metrics(spec, prepared)
    if resume is not None and resume.spec_hash != spec.spec_hash():
        raise SpecError("The checkpoint belongs to a different spec.", {"resume": ["spec_hash does not match."]})
    if len(prepared.x_train) == 0:
        raise SpecError("No training rows.", {"data": ["The train split is empty."]})
    if privacy is not None:
        dp_problems: dict[str, list[str]] = {}
        if world > 1:
            dp_problems["world_size"] = ["DP-SGD runs in one process (its accountant assumes one Poisson sampler)."]
        if spec.grad_accum_steps != 1:
            dp_problems["grad_accum_steps"] = ["DP-SGD takes one Poisson batch per step; use 1."]
        if spec.precision == "fp16":
            dp_problems["precision"] = [
                "DP-SGD runs in fp32 (per-sample gradients under a GradScaler are not supported)."
            ]
        if any(dp_problems.values()):
            raise SpecError("This spec cannot train with DP-SGD.", dp_problems)
    with _run_context(spec, device):
        return _loop(spec, prepared, sink, names, device, resume, should_stop, rank, world, init_weights, proximal_mu,
                     privacy, prior_privacy_history)  # fmt: skip


def _loop(
    spec: TrainSpec,
    prepared: Prepared,
    sink: ProgressSink,
    names: tuple[str, ...],
    device: torch.device,
    resume: TrainState | None,
    should_stop: Callable[[], bool] | None,
    rank: int,
    world: int,
    init_weights: Mapping[str, torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
    privacy: DPConfig | None = None,
    prior_privacy_history: Sequence[Sequence[float]] = (),
) -> TrainResult:
    started = time.perf_counter()
    seed_everything(spec.seed)
    core = build(spec.model.name, spec.model.params, prepared.input_info).to(device)
    if init_weights is not None and resume is None:
        load_init_weights(core, init_weights)
    anchors = [p.detach().clone() for p in core.parameters()] if proximal_mu > 0 else []
    model: nn.Module = core
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(spec, core.parameters())  # type: ignore[arg-type]
    n = len(prepared.x_train)
    bs, accum = spec.batch_size, spec.grad_accum_steps
    n_batches = math.ceil(n / bs)
    steps_per_epoch = math.ceil(n_batches / accum)
    total_steps = steps_per_epoch * spec.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(spec.schedule, s, total_steps))
    scaler = torch.amp.GradScaler("cuda") if spec.precision == "fp16" else None
    classification = prepared.is_classification
    es = spec.early_stopping
    monitor = "val_" + _bare(es.metric if es else "loss")
    mode = es.resolved_mode() if es else "min"

    x_train, y_train = prepared.x_train, prepared.y_train
    if device.type == "cuda":
        x_train, y_train = x_train.to(device), y_train.to(device)
    row_bytes = (x_train[:1].nbytes + y_train[:1].nbytes) or 1
    chunk_rows = max(1, GATHER_BYTES // (row_bytes * bs)) * bs  # whole micro-batches
    amp = spec.precision != "fp32" and privacy is None  # DP-SGD: fp32 per-sample gradients
    log_every, checkpoint_every = spec.log_every_steps, spec.checkpoint_every_steps

    epoch, step, batch_pos, samples_seen = 0, 0, 0, 0
    best: float | None = None
    best_epoch, bad_epochs = -1, 0
    best_metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    epoch_loss, epoch_samples = 0.0, 0
    if resume is not None:
        core.load_state_dict(resume.model_state)
        optimizer.load_state_dict(resume.optimizer_state)
        scheduler.load_state_dict(resume.scheduler_state)
        if scaler is not None and resume.scaler_state:
            scaler.load_state_dict(resume.scaler_state)
        epoch, step, batch_pos = resume.epoch, resume.step, resume.batch_in_epoch
        samples_seen = resume.samples_seen
        best, best_epoch, bad_epochs = resume.best_metric, resume.best_epoch, resume.bad_epochs
        best_metrics, history = dict(resume.best_metrics), [dict(h) for h in resume.history]
        epoch_loss, epoch_samples = resume.epoch_loss_sum, resume.epoch_samples
        restore_rng(resume.rng)  # last: building the model above consumed RNG
    dp: DPSession | None = None
    if privacy is not None:
        dp_history = resume.privacy_history if resume is not None else prior_privacy_history
        try:
            dp = DPSession(core, optimizer, privacy, n_rows=n, batch_size=bs, seed=spec.seed, device=device,
                           history=dp_history)  # fmt: skip
        except ValueError as exc:
            raise SpecError(str(exc), {"model": [str(exc)]}) from exc
        model = dp.model
    samples_at_start = samples_seen
    eval_seconds = 0.0
    pending: list[torch.Tensor] = []  # detached per-batch loss sums not yet in epoch_loss

    def settle() -> None:
        """Add the queued loss sums to ``epoch_loss`` in batch order (one device sync)."""
        nonlocal epoch_loss
        if pending:
            for value in torch.stack(pending).tolist():
                epoch_loss += value
            pending.clear()

    def snapshot() -> TrainState:
        settle()
        return TrainState(
            model_state={k: v.detach().cpu().clone() for k, v in core.state_dict().items()},
            optimizer_state=copy.deepcopy(optimizer.state_dict()),
            scheduler_state=copy.deepcopy(scheduler.state_dict()),
            scaler_state=scaler.state_dict() if scaler is not None else {},
            rng=capture_rng(),
            epoch=epoch,
            step=step,
            batch_in_epoch=batch_pos,
            samples_seen=samples_seen,
            best_metric=best,
            best_epoch=best_epoch,
            bad_epochs=bad_epochs,
            best_metrics=dict(best_metrics),
            history=[dict(h) for h in history],
            epoch_loss_sum=epoch_loss,
            epoch_samples=epoch_samples,
            spec_hash=spec.spec_hash(),
            privacy_history=list(dp.history) if dp is not None else [],
        )

    wants_checkpoints = getattr(type(sink), "on_checkpoint", None) is not NullSink.on_checkpoint

    def checkpoint() -> None:
        if wants_checkpoints:
            sink.on_checkpoint(snapshot())

    def finish(status: str) -> TrainResult:
        if dp is not None:
            dp.close()
        seconds = time.perf_counter() - started
        done = samples_seen - samples_at_start
        final = {k: v for k, v in history[-1].items() if k != "epoch"} if history else {}
        return TrainResult(
            status=status,
            final_metrics=final,
            best_metrics=dict(best_metrics),
            best_epoch=best_epoch,
            history=history,
            steps=step,
            epochs=len(history),
            samples_seen=samples_seen,
            seconds=seconds,
            samples_per_second=done / seconds if seconds > 0 else 0.0,
            device=str(device),
            spec_hash=spec.spec_hash(),
            model_state={k: v.detach().cpu().clone() for k, v in core.state_dict().items()},
            eval_seconds=eval_seconds,
            n_train=n,
            epsilon=dp.epsilon() if dp is not None else None,
            privacy_history=list(dp.history) if dp is not None else [],
        )

    def forward_backward(xb: torch.Tensor, yb: torch.Tensor, scale: float) -> torch.Tensor:
        if amp:
            with _autocast(device, spec.precision):
                out = model(xb)
        else:
            out = model(xb)
        loss_sum = _loss_sum(out, yb, classification)
        loss = loss_sum * scale
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        return loss_sum.detach()

    if rank == 0:
        n_params = sum(p.numel() for p in core.parameters())
        sink.on_log(
            f"training {spec.model.name} ({n_params} parameters) on {device} x{world}, {spec.precision}, "
            f"{n} train / {len(prepared.x_val)} val rows, {steps_per_epoch} steps/epoch"
        )
    status = "completed"
    model.train()
    while epoch < spec.epochs:
        perm = epoch_permutation(n, spec.seed, epoch)
        if device.type == "cuda":
            perm = perm.to(device)
        # Single process: rows [chunk_lo, chunk_hi) of the epoch order, gathered into xs/ys.
        chunk_lo = chunk_hi = 0
        xs, ys = x_train, y_train
        while batch_pos < n_batches:
            if should_stop is not None and should_stop():
                if rank == 0:
                    sink.on_log(f"stop requested at step {step}")
                    checkpoint()
                return finish("stopped")
            if dp is not None:  # DP-SGD: one seeded Poisson batch per step (its size varies, may be 0)
                try:
                    dp.check_budget(step)
                except BudgetExhausted as exc:
                    sink.on_log(f"privacy budget: {exc}; stopping")
                    checkpoint()
                    return finish("budget_exhausted")
                dp.zero_grad()
                rows = dp.batch_rows(step)
                with dp.backward_hooks():
                    pending.append(forward_backward(x_train.index_select(0, rows), y_train.index_select(0, rows), 1.0))
                dp.privatise(step)
                last, group_total = batch_pos + 1, len(rows)
                epoch_samples += group_total
            else:
                last = min(batch_pos + accum, n_batches)
                group_total = min(last * bs, n) - batch_pos * bs
                optimizer.zero_grad(set_to_none=True)
            scale = world / max(group_total, 1)
            for b in range(batch_pos, last) if dp is None else ():  # (DP: done above)
                lo, hi = b * bs, min(b * bs + bs, n)
                if world == 1:
                    if hi > chunk_hi:
                        chunk_lo, chunk_hi = lo, min(lo + chunk_rows, n)
                        rows = perm[chunk_lo:chunk_hi]
                        xs, ys = x_train.index_select(0, rows), y_train.index_select(0, rows)
                    pending.append(
                        forward_backward(xs[lo - chunk_lo : hi - chunk_lo], ys[lo - chunk_lo : hi - chunk_lo], scale)
                    )
                    epoch_samples += hi - lo
                    continue
                local = perm[lo + rank : hi : world]  # this rank's share of micro-batch b
                ctx = contextlib.nullcontext() if b == last - 1 else model.no_sync()  # type: ignore[operator]
                with ctx:
                    pending.append(forward_backward(x_train[local], y_train[local], scale))
                epoch_samples += len(local)
            if anchors:  # FedProx: the gradient of mu/2 * ||w - w_start||^2
                if scaler is not None:
                    scaler.unscale_(optimizer)
                with torch.no_grad():
                    for param, anchor in zip(core.parameters(), anchors, strict=True):
                        if param.grad is not None:
                            param.grad.add_(param.detach() - anchor, alpha=proximal_mu)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()  # under DP, the plain optimizer: the DPSession already noised p.grad
            if dp is not None:
                dp.record_step()
            scheduler.step()
            step += 1
            batch_pos = last
            samples_seen += group_total
            if rank == 0 and step % log_every == 0:
                settle()
                sink.on_metrics(
                    step,
                    epoch,
                    {"train_loss": epoch_loss / max(epoch_samples, 1), "lr": float(optimizer.param_groups[0]["lr"])},
                )
            if rank == 0 and checkpoint_every and step % checkpoint_every == 0:
                checkpoint()
            elif len(pending) >= PENDING_LOSSES:
                settle()

        # epoch end: every rank evaluates the full (small) val split, so early stopping agrees.
        settle()
        eval_started = time.perf_counter()
        val = evaluate(core, prepared, names, device, spec.precision)
        eval_seconds += time.perf_counter() - eval_started
        row = {"epoch": float(epoch), "train_loss": epoch_loss / max(epoch_samples, 1)}
        row.update({f"val_{k}": v for k, v in val.items()})
        history.append(row)
        value = row.get(monitor, float("nan"))
        improved = not math.isnan(value) and (
            best is None
            or (mode == "min" and value < best - (es.min_delta if es else 0.0))
            or (mode == "max" and value > best + (es.min_delta if es else 0.0))
        )
        if improved:
            best, best_epoch, bad_epochs = value, epoch, 0
            best_metrics = {k: v for k, v in row.items() if k != "epoch"}
        else:
            bad_epochs += 1
        epoch += 1
        batch_pos, epoch_loss, epoch_samples = 0, 0.0, 0
        if rank == 0:
            metrics_only = {k: v for k, v in row.items() if k != "epoch"}
            sink.on_epoch_end(epoch - 1, metrics_only)
            sink.on_metrics(step, epoch - 1, metrics_only)
            sink.on_log(f"epoch {epoch - 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics_only.items()))
            checkpoint()
        if es is not None and bad_epochs >= es.patience:
            status = "early_stopped"
            if rank == 0:
                sink.on_log(f"early stopping: {monitor} did not improve for {es.patience} epochs")
            break
    return finish(status)
