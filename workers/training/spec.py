"""What a training run is asked to do, as a frozen, JSON-serialisable value.

A :class:`TrainSpec` travels from the API (a tenant's request) through the queue to a worker and
into every checkpoint, so it is plain data: ``to_dict``/``from_dict`` round-trip through JSON and
:meth:`TrainSpec.spec_hash` names the run's mathematics, so a checkpoint is never resumed under a
different spec. :meth:`TrainSpec.validate` reports *every* problem at once (as
:class:`SpecError.fields`) because the caller is usually a form that wants all its errors.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "auroc")
REGRESSION_METRICS = ("rmse", "mae", "r2")
METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS
MINIMISED = frozenset({"loss", "rmse", "mae"})
IMAGE_MODES = ("L", "RGB")

# Fields that choose *where* or *how often* a run reports, not what it computes: a run may be
# resumed on another machine or with another checkpoint cadence under the same hash.
_UNHASHED = frozenset({"device", "num_threads", "checkpoint_every_steps", "log_every_steps"})


class SpecError(ValueError):
    """A spec that cannot run. ``fields`` maps a dotted field path to its messages."""

    def __init__(self, message: str, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message if not fields else f"{message} {fields}")
        self.message = message
        self.fields = fields or {}


@dataclass(frozen=True)
class ModelSpec:
    """A registered model name plus its constructor parameters (see ``workers.training.models``)."""

    name: str = "mlp"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw only


@dataclass(frozen=True)
class ScheduleSpec:
    """Learning-rate schedule over *optimizer* steps; linear warmup first, then the named shape."""

    name: str = "constant"
    warmup_steps: int = 0
    step_size: int = 100  # "step": multiply by gamma every step_size optimizer steps
    gamma: float = 0.1
    min_lr_ratio: float = 0.0  # "cosine": floor as a fraction of lr


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """Stop when ``metric`` (a validation metric or ``loss``) has not improved for ``patience`` epochs."""

    metric: str = "loss"
    patience: int = 3
    mode: str | None = None  # "min" | "max"; None infers from the metric
    min_delta: float = 0.0

    def resolved_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        return "min" if _bare(self.metric) in MINIMISED else "max"


@dataclass(frozen=True)
class DataSpec:
    """How raw columns become tensors; stored in the spec because it changes what the model learns."""

    max_categories: int = 20  # one-hot cap per category/string column (top-K + "other")
    image_size: int = 32
    image_mode: str = "L"  # "L" (grayscale) or "RGB"
    text_min_freq: int = 1
    text_max_vocab: int = 20000
    text_max_len: int = 128


@dataclass(frozen=True)
class PrivacySpec:
    """DP-SGD for a training job (Opacus: per-sample clipping to ``max_grad_norm``, Gaussian noise
    ``noise_multiplier * max_grad_norm``, Poisson sampling), charged to the dataset's ledger."""

    noise_multiplier: float | None = None  # None: calibrated from target_epsilon
    max_grad_norm: float = 1.0
    target_epsilon: float | None = None  # the run may not exceed it (default cap: 8)
    delta: float = 1e-6
    accountant: str = "rdp"  # "rdp" | "prv"


PRIVACY_EPSILON_CAP = 8.0
PRIVACY_ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class TrainSpec:
    model: ModelSpec = field(default_factory=ModelSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    epochs: int = 10
    batch_size: int = 32  # global samples per micro-batch (split across ranks under DDP)
    grad_accum_steps: int = 1
    precision: str = "fp32"
    seed: int = 0
    metrics: tuple[str, ...] = ()  # empty: the task's defaults
    early_stopping: EarlyStoppingSpec | None = None
    checkpoint_every_steps: int = 0  # 0: only at epoch ends
    log_every_steps: int = 10
    val_fraction: float = 0.2
    num_threads: int = 1
    world_size: int = 1  # data-parallel processes (torch.distributed) per node
    nnodes: int = 1  # nodes (one platform worker task each), meeting at a c10d rendezvous
    device: str = "auto"
    data: DataSpec = field(default_factory=DataSpec)
    privacy: PrivacySpec | None = None  # DP-SGD; None: ordinary training

    # --- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["optimizer"]["betas"] = list(self.optimizer.betas)
        d["metrics"] = list(self.metrics)
        if self.privacy is None:  # absent, not null: specs from before privacy keep their hash
            d.pop("privacy")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        """Build a spec from JSON data; unknown keys and wrong shapes raise :class:`SpecError`."""
        errors: dict[str, list[str]] = {}
        if not isinstance(data, dict):
            raise SpecError("A training spec is a JSON object.", {"": ["Expected an object."]})

        def sub(key: str, klass: type[Any]) -> Any:
            raw = data.get(key)
            if raw is None:
                return None if key in ("early_stopping", "privacy") else klass()
            if not isinstance(raw, dict):
                errors.setdefault(key, []).append("Expected an object.")
                return klass()
            known = {f.name for f in fields(klass)}
            for k in raw:
                if k not in known:
                    errors.setdefault(f"{key}.{k}", []).append("Unknown field.")
            kwargs = {k: v for k, v in raw.items() if k in known}
            if klass is OptimizerSpec and "betas" in kwargs:
                b = kwargs["betas"]
                if not isinstance(b, list | tuple) or len(b) != 2:
                    errors.setdefault("optimizer.betas", []).append("Expected two numbers.")
                    kwargs.pop("betas")
                else:
                    kwargs["betas"] = (b[0], b[1])
            if klass is ModelSpec and "params" in kwargs and not isinstance(kwargs["params"], dict):
                errors.setdefault("model.params", []).append("Expected an object.")
                kwargs.pop("params")
            return klass(**kwargs)

        top = {f.name for f in fields(cls)}
        for k in data:
            if k not in top:
                errors.setdefault(k, []).append("Unknown field.")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in top}
        kwargs["model"] = sub("model", ModelSpec)
        kwargs["optimizer"] = sub("optimizer", OptimizerSpec)
        kwargs["schedule"] = sub("schedule", ScheduleSpec)
        kwargs["early_stopping"] = sub("early_stopping", EarlyStoppingSpec)
        kwargs["data"] = sub("data", DataSpec)
        kwargs["privacy"] = sub("privacy", PrivacySpec)
        if "metrics" in kwargs:
            m = kwargs["metrics"]
            if not isinstance(m, list | tuple) or not all(isinstance(x, str) for x in m):
                errors.setdefault("metrics", []).append("Expected a list of metric names.")
                kwargs.pop("metrics")
            else:
                kwargs["metrics"] = tuple(m)
        if errors:
            raise SpecError("The training spec is not valid.", errors)
        return cls(**kwargs)

    def spec_hash(self) -> str:
        """SHA-256 of the canonical JSON of the fields that change the run's mathematics."""
        d = {k: v for k, v in self.to_dict().items() if k not in _UNHASHED}
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    # --- checks -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`SpecError` listing every problem; return ``None`` when the spec can run."""
        e: dict[str, list[str]] = {}

        def bad(path: str, msg: str) -> None:
            e.setdefault(path, []).append(msg)

        def int_at_least(path: str, v: Any, lo: int, hi: int = 2**31 - 1) -> None:
            # An upper bound too: a spec is user input, and 10**300 epochs is a mistake, not a plan.
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                bad(path, f"Expected an integer from {lo} to {hi}.")

        def positive(path: str, v: Any, *, allow_zero: bool = False) -> None:
            try:
                ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v < 1e6
            except OverflowError:  # an int too large for a float
                ok = False
            if not ok or v < 0 or (v == 0 and not allow_zero):
                bad(path, "Expected a number >= 0 and < 1e6." if allow_zero else "Expected a number > 0 and < 1e6.")

        def has_nul(value: Any) -> bool:
            """PostgreSQL text and jsonb cannot hold NUL characters."""
            if isinstance(value, str):
                return "\x00" in value
            if isinstance(value, dict):
                return any(has_nul(k) or has_nul(v) for k, v in value.items())
            if isinstance(value, list | tuple):
                return any(has_nul(v) for v in value)
            return False

        from workers.training.models import available, check_spec  # local: models import torch, spec must not

        known_model = isinstance(self.model.name, str) and self.model.name in available()
        if not known_model:
            bad("model.name", f"Unknown model {self.model.name!r}; one of {', '.join(available())}.")
        if not isinstance(self.model.params, dict):
            bad("model.params", "Expected an object.")
        else:
            try:
                json.dumps(self.model.params)
            except (TypeError, ValueError):
                bad("model.params", "Parameters must be JSON values.")
            else:
                if has_nul(self.model.params):
                    bad("model.params", "Parameters may not contain NUL characters.")
                elif known_model:
                    for path, messages in check_spec(self).items():
                        for message in messages:
                            bad(path, message)

        o = self.optimizer
        if o.name not in OPTIMIZERS:
            bad("optimizer.name", f"Unknown optimizer {o.name!r}; one of {', '.join(OPTIMIZERS)}.")
        positive("optimizer.lr", o.lr)
        positive("optimizer.weight_decay", o.weight_decay, allow_zero=True)
        positive("optimizer.momentum", o.momentum, allow_zero=True)
        if isinstance(o.momentum, int | float) and o.momentum >= 1:
            bad("optimizer.momentum", "Momentum must be below 1.")
        if not (
            isinstance(o.betas, tuple)
            and len(o.betas) == 2
            and all(isinstance(b, int | float) and 0 <= b < 1 for b in o.betas)
        ):
            bad("optimizer.betas", "Expected two numbers in [0, 1).")

        s = self.schedule
        if s.name not in SCHEDULES:
            bad("schedule.name", f"Unknown schedule {s.name!r}; one of {', '.join(SCHEDULES)}.")
        int_at_least("schedule.warmup_steps", s.warmup_steps, 0)
        int_at_least("schedule.step_size", s.step_size, 1)
        positive("schedule.gamma", s.gamma)
        if not isinstance(s.min_lr_ratio, int | float) or not 0 <= s.min_lr_ratio <= 1:
            bad("schedule.min_lr_ratio", "Expected a number in [0, 1].")

        int_at_least("epochs", self.epochs, 1, 100_000)
        int_at_least("batch_size", self.batch_size, 1, 1_000_000)
        int_at_least("grad_accum_steps", self.grad_accum_steps, 1, 10_000)
        int_at_least("seed", self.seed, 0)
        int_at_least("checkpoint_every_steps", self.checkpoint_every_steps, 0)
        int_at_least("log_every_steps", self.log_every_steps, 1)
        int_at_least("num_threads", self.num_threads, 1, 1024)
        int_at_least("world_size", self.world_size, 1, 64)
        int_at_least("nnodes", self.nnodes, 1, 16)
        ranks_known = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.world_size, self.nnodes))
        procs = self.world_size * self.nnodes if ranks_known else 1
        if isinstance(self.batch_size, int) and self.batch_size < procs:
            bad(
                "batch_size",
                "Each data-parallel process needs at least one sample per batch (batch_size >= world_size × nnodes).",
            )
        if self.precision not in PRECISIONS:
            bad("precision", f"Unknown precision {self.precision!r}; one of {', '.join(PRECISIONS)}.")
        if self.device not in DEVICES:
            bad("device", f"Unknown device {self.device!r}; one of {', '.join(DEVICES)}.")
        if self.precision == "fp16" and self.device == "cpu":
            bad("precision", "fp16 needs CUDA (GradScaler); use bf16 or fp32 on CPU.")
        if not isinstance(self.val_fraction, int | float) or not 0 < self.val_fraction < 1:
            bad("val_fraction", "Expected a number strictly between 0 and 1.")
        if not isinstance(self.metrics, tuple):
            bad("metrics", "Expected a list of metric names.")
        else:
            for m in self.metrics:
                if m not in METRICS:
                    bad("metrics", f"Unknown metric {m!r}; one of {', '.join(METRICS)}.")

        es = self.early_stopping
        if es is not None:
            if not isinstance(es.metric, str):
                bad("early_stopping.metric", "Expected a metric name.")
            elif _bare(es.metric) not in (*METRICS, "loss"):
                bad("early_stopping.metric", f"Unknown metric {es.metric!r}.")
            elif _bare(es.metric) != "loss" and self.metrics and _bare(es.metric) not in self.metrics:
                bad("early_stopping.metric", "Early stopping watches a metric the run does not compute.")
            int_at_least("early_stopping.patience", es.patience, 1)
            if es.mode not in (None, "min", "max"):
                bad("early_stopping.mode", "Expected 'min', 'max' or null.")
            positive("early_stopping.min_delta", es.min_delta, allow_zero=True)

        d = self.data
        int_at_least("data.max_categories", d.max_categories, 1)
        int_at_least("data.image_size", d.image_size, 4)
        if isinstance(d.image_size, int) and d.image_size > 512:
            bad("data.image_size", "At most 512 pixels.")
        if d.image_mode not in IMAGE_MODES:
            bad("data.image_mode", "Expected 'L' (grayscale) or 'RGB'.")
        int_at_least("data.text_min_freq", d.text_min_freq, 1)
        int_at_least("data.text_max_vocab", d.text_max_vocab, 3)
        int_at_least("data.text_max_len", d.text_max_len, 1)
        if self.privacy is not None:
            self._privacy_problems(bad)
        if e:
            raise SpecError("The training spec is not valid.", e)

    def _privacy_problems(self, bad: Any) -> None:
        p = self.privacy
        assert p is not None

        def number(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        if p.noise_multiplier is None and p.target_epsilon is None:
            bad("privacy.noise_multiplier", "Give noise_multiplier or target_epsilon.")
        if p.noise_multiplier is not None and not (number(p.noise_multiplier) and 0 < p.noise_multiplier <= 100):
            bad("privacy.noise_multiplier", "A number above 0 (at most 100).")
        if p.target_epsilon is not None and not (
            number(p.target_epsilon) and 0 < p.target_epsilon <= PRIVACY_EPSILON_CAP
        ):
            bad("privacy.target_epsilon", f"A number above 0 and at most the platform cap {PRIVACY_EPSILON_CAP:g}.")
        if not (number(p.max_grad_norm) and 0 < p.max_grad_norm <= 1e6):
            bad("privacy.max_grad_norm", "A number above 0.")
        if not (number(p.delta) and 0 < p.delta < 1):
            bad("privacy.delta", "A number in (0, 1), below 1/N of the dataset's rows.")
        if p.accountant not in PRIVACY_ACCOUNTANTS:
            bad("privacy.accountant", f"One of {', '.join(PRIVACY_ACCOUNTANTS)}.")
        if self.world_size != 1 or self.nnodes != 1:
            bad("world_size", "DP-SGD runs in one process (world_size 1, nnodes 1).")
        if self.grad_accum_steps != 1:
            bad("grad_accum_steps", "DP-SGD clips per sample in each step: grad_accum_steps must be 1.")
        if self.precision == "fp16":
            bad("precision", "DP-SGD trains in fp32 (bf16 runs as fp32); fp16 is refused.")
        if self.early_stopping is not None:
            bad("early_stopping", "Early stopping reads validation metrics every epoch; not under DP-SGD.")
        from workers.federated.spec import dp_model_problems  # (imports this module: at call time)

        for problem in dp_model_problems(self):
            bad("model", f"DP-SGD cannot train this model (Opacus ModuleValidator): {problem}")


def _bare(metric: str) -> str:
    """``val_accuracy`` and ``accuracy`` name the same validation metric."""
    return metric[4:] if metric.startswith("val_") else metric
