"""Differential privacy for training: DP-SGD on Opacus 1.6 and its privacy accountants.

DP-SGD (Abadi et al. 2016), as Opacus runs it: each optimizer step draws a batch by **Poisson
sampling** (every training row independently with probability ``q = batch_size / N``; the batch
size varies, and may be 0), computes **per-sample gradients** (Opacus' ``GradSampleModule``), clips
each to L2 norm ``max_grad_norm``, sums them, adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` and divides by the expected batch size (Opacus'
``DPOptimizer``). The accountant (RDP by default, or PRV) composes the steps, ``(sigma, q, steps)``
records, into ``epsilon`` at ``delta``.

What this module adds to Opacus:

* **Seeded, resumable randomness.** The sampling mask and the noise of step ``t`` come from
  generators seeded by ``(seed, t)`` alone, so a retried federation round reproduces its update bit
  for bit, and a resumed job continues exactly (the accountant's history travels in ``TrainState``).
  This is ``secure_mode=False`` noise (``torch.normal``): adequate against the platform's threat
  model, where the noise is drawn inside the data owner's own task; it is stated in
  ``docs/federation.md``.
* **One place for the figures.** :func:`epsilon_for` recomputes ε from a history, :func:`calibrate`
  finds the noise multiplier for a target ε, :func:`model_problems` lists what Opacus'
  ``ModuleValidator`` refuses (BatchNorm and the like), all with the accountant named in the spec.

No Django here: the engine (``workers.training.engine``) calls :class:`DPSession` for jobs and
federation sites alike.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ACCOUNTANTS = ("rdp", "prv")
# Poisson sampling: one generator for the mask and one for the noise, each derived from the run's
# seed and the step, so no generator state has to be checkpointed.
_SAMPLING_STREAM, _NOISE_STREAM = 0x5A3D, 0x9E37


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD for one training run: the noise is ``noise_multiplier * max_grad_norm``."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str = "rdp"
    # Refuse a step that would take ε past this (FL-4: "training must refuse to continue past the
    # budget"); None: no cap beyond the caller's own.
    max_epsilon: float | None = None
    # Poisson sampling rate; None: batch_size / N of the train split. A federation fixes it from the
    # dataset version's row count (known at start, so the projection reserved then is exact).
    sample_rate: float | None = None

    def __post_init__(self) -> None:
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"Unknown accountant {self.accountant!r}; one of {', '.join(ACCOUNTANTS)}.")
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier!r}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ValueError(f"max_grad_norm must be finite and > 0, got {self.max_grad_norm!r}")
        if not (0 < self.delta < 1):
            raise ValueError(f"delta must be in (0, 1), got {self.delta!r}")
        if self.sample_rate is not None and not (0 < self.sample_rate <= 1):
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")


class BudgetExhausted(RuntimeError):
    """The next DP-SGD step would spend more ε than the run may (``DPConfig.max_epsilon``)."""

    def __init__(self, epsilon: float, cap: float, step: int) -> None:
        super().__init__(f"step {step} would take epsilon to {epsilon:.4f}, past the cap {cap:g}")
        self.epsilon, self.cap, self.step = epsilon, cap, step


# --- accounting -----------------------------------------------------------------------------------
History = list[tuple[float, float, int]]  # (noise_multiplier, sample_rate, steps), Opacus' own form


def _accountant(name: str, history: Iterable[Sequence[float]] = ()) -> Any:
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=name)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return acc


def epsilon_for(history: Iterable[Sequence[float]], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` after the steps in ``history`` (0 for none; ``inf`` for a noiseless step)."""
    hist = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not hist:
        return 0.0
    if any(s == 0 for s, _q, _n in hist):
        return math.inf
    with _quiet_accountant():
        return float(_accountant(accountant, hist).get_epsilon(delta=delta))


@contextlib.contextmanager
def _quiet_accountant() -> Iterator[None]:
    """Opacus' RDP accountant warns when its best order is the largest or the smallest it tried
    (the bound could be tighter with other orders; the smallest happens for a very large ε): the ε
    it returns is still a valid upper bound, so it is reported as is rather than raised (the test
    suite turns warnings into errors; a huge projection must be a 400, not a 500)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha", category=UserWarning)
        warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha", category=UserWarning)
        yield


def compose(history: Iterable[Sequence[float]], noise_multiplier: float, sample_rate: float, steps: int) -> History:
    """``history`` with ``steps`` more steps at ``(noise_multiplier, sample_rate)``, merged as Opacus does."""
    out: History = [(float(s), float(q), int(n)) for s, q, n in history]
    if steps <= 0:
        return out
    if out and out[-1][0] == noise_multiplier and out[-1][1] == sample_rate:
        s, q, n = out[-1]
        out[-1] = (s, q, n + steps)
    else:
        out.append((float(noise_multiplier), float(sample_rate), int(steps)))
    return out


def calibrate(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """The smallest noise multiplier (Opacus' binary search, to 0.01 in ε) whose ``steps`` steps at
    ``sample_rate`` stay within ``target_epsilon`` at ``delta``.

    Raises:
        ValueError: the target cannot be met (Opacus' message), or bad arguments.
    """
    from opacus.accountants.utils import get_noise_multiplier

    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    with _quiet_accountant():
        sigma = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.01,
        )
    return float(sigma)


def model_problems(model: nn.Module) -> list[str]:
    """What Opacus' ``ModuleValidator`` refuses in ``model`` (empty: DP-SGD can train it)."""
    from opacus.validators import ModuleValidator

    return [str(e) for e in ModuleValidator.validate(model, strict=False)]


def sample_rate(batch_size: int, n_rows: int) -> float:
    """Poisson sampling's ``q``: each row is in a step's batch with probability ``batch_size / N``."""
    if n_rows <= 0:
        raise ValueError("no training rows")
    return min(1.0, batch_size / n_rows)


def _generator(seed: int, stream: int, step: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    # splitmix-style mixing into 63 bits: distinct (seed, stream, step) give unrelated streams.
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(stream) * 0xBF58476D1CE4E5B9 + int(step) * 0x94D049BB133111EB) % (1 << 64)
    x ^= x >> 31
    g.manual_seed(x & ((1 << 63) - 1))
    return g


# --- the training step ----------------------------------------------------------------------------
class DPSession:
    """DP-SGD around one model and optimizer, for the engine's loop.

    ``model`` is what the loop calls forward on (Opacus' ``GradSampleModule`` around ``core``);
    ``step(loss_backward)`` samples a Poisson batch of ``n`` rows, runs the caller's
    forward/backward on it, clips, noises and applies the update, and records the step.
    """

    def __init__(
        self,
        core: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: DPConfig,
        *,
        n_rows: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        history: Iterable[Sequence[float]] = (),
    ) -> None:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        problems = model_problems(core)
        if problems:
            raise ValueError("DP-SGD cannot train this model: " + "; ".join(problems))
        self.config = config
        self.n_rows, self.batch_size, self.seed, self.device = n_rows, batch_size, seed, device
        self.q = config.sample_rate if config.sample_rate is not None else sample_rate(batch_size, n_rows)
        self.model = GradSampleModule(core, batch_first=True, loss_reduction="sum")
        # The loop's loss is a sum over the batch, so per-sample gradients need no rescaling
        # (GradSampleModule "sum"); the optimizer divides the noised sum by the *expected* batch
        # size, as DP-SGD with Poisson sampling must (DPOptimizer "mean").
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=config.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            expected_batch_size=max(1, round(self.q * n_rows)),
            loss_reduction="mean",
        )
        self.history: History = [(float(s), float(q), int(n)) for s, q, n in history]

    def epsilon(self) -> float:
        return epsilon_for(self.history, self.config.delta, self.config.accountant)

    def steps(self) -> int:
        return sum(n for _s, _q, n in self.history)

    def batch_rows(self, step: int) -> torch.Tensor:
        """The rows (indices into the train split) of step ``step``'s Poisson batch, ascending."""
        g = _generator(self.seed, _SAMPLING_STREAM, step, torch.device("cpu"))
        mask = torch.rand(self.n_rows, generator=g) < self.q
        return mask.nonzero().squeeze(1).to(self.device)

    def check_budget(self, step: int) -> None:
        cap = self.config.max_epsilon
        if cap is None:
            return
        after = epsilon_for(compose(self.history, self.config.noise_multiplier, self.q, 1), self.config.delta,
                            self.config.accountant)  # fmt: skip
        if after > cap * (1 + 1e-9):
            raise BudgetExhausted(after, cap, step)

    @contextlib.contextmanager
    def backward_hooks(self) -> Iterator[None]:
        """Around the step's forward/backward: Opacus computes per-sample gradients in full backward
        hooks, and torch warns on every call that the first layer's input needs no gradient (true,
        and harmless: the hook reads the layer's own activations, not its input's gradient)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            yield

    def privatise(self, step: int) -> bool:
        """Clip, accumulate and noise the gradients of step ``step`` into ``p.grad`` (seeded noise).
        False: Opacus skipped the step (never, without virtual steps)."""
        self.optimizer.generator = _generator(self.seed, _NOISE_STREAM, step, self.device)
        return bool(self.optimizer.pre_step())

    def record_step(self) -> None:
        self.history = compose(self.history, self.config.noise_multiplier, self.q, 1)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Remove Opacus' hooks from the wrapped model (the caller keeps using ``core``)."""
        self.model._close()


# --- a training job's DP-SGD (TrainSpec.privacy) ---------------------------------------------------
# As for a federation's site: the Poisson rate and the step count are fixed from the dataset
# version's row count N (known when the job is created): q = batch_size / N and epochs *
# ceil(N / batch_size) steps, an upper bound on what the train split takes, so the ε reserved on the
# ledger at creation bounds the spend.


def job_dp_config(spec: Any, n_rows: int) -> DPConfig:
    """The DPConfig of a job whose spec has a ``privacy`` section, on a version of ``n_rows`` rows.

    Raises:
        ValueError: a target the accountant cannot meet with these steps (Opacus' message).
    """
    p = spec.privacy
    assert p is not None, "job_dp_config needs spec.privacy"
    q = sample_rate(spec.batch_size, n_rows)
    steps = int(spec.epochs) * math.ceil(max(1, n_rows) / spec.batch_size)
    sigma = (
        float(p.noise_multiplier)
        if p.noise_multiplier is not None
        else calibrate(float(p.target_epsilon), float(p.delta), q, steps, p.accountant)
    )
    projected = epsilon_for([(sigma, q, steps)], float(p.delta), p.accountant)
    return DPConfig(noise_multiplier=sigma, max_grad_norm=float(p.max_grad_norm), delta=float(p.delta),
                    accountant=p.accountant, max_epsilon=projected, sample_rate=q)  # fmt: skip
