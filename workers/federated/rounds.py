"""One federated round's pure parts: who takes part, what a site computes, how the server combines.

The platform (``apps.federation.services.rounds``) keeps all state in PostgreSQL and calls these;
nothing here touches Django, storage or the network, so the same functions serve the platform's
Celery workers and, later, the edge agent.

* :func:`select_sites` — the round's participants: seeded, and fair (a site left out of a round is
  preferred in the next, so every site takes part as often as ``per_round`` allows).
* :func:`site_seed` — the local training seed of one (federation, site, round): derived with HMAC
  from the federation's secret, so a site cannot predict another's, yet a retried task reproduces
  its update bit for bit (the crash-recovery promise of WRK-1).
* :func:`initial_state` — the round-0 global model, built from the merged encoders.
* :func:`local_update` — a site's local training from the global state; returns the **delta**
  ``local - global`` (clipped to ``update_bound`` when one is set) and its weight ``n_train``.
* :func:`evaluate_state` — a model state's validation metrics on a site's own split.
* :func:`aggregate_round` — the strategy over the round's deltas, in participant order (FL-6),
  refusing a non-finite global (FL-1).
* :func:`weighted_global` — metrics averaged across sites, weighted by their example counts.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from workers.federated.spec import FederationSpec
from workers.federated.strategies import make_strategy
from workers.federated.strategies.base import Strategy
from workers.federated.validate import check_global_finite, clip_update, update_l2_norm
from workers.training.data import Prepared, tabular_feature_names, text_input_info
from workers.training.engine import NullSink, evaluate, resolve_metrics, run_context, seed_everything, train
from workers.training.models import build
from workers.training.privacy import DPConfig


class FederatedUnsupported(NotImplementedError):
    """A federation option this build does not implement yet (named in the message)."""


def site_seed(secret: bytes, federation_id: int, site_id: int, round_number: int) -> int:
    """HMAC-SHA256(secret, "federation:site:round") as a 31-bit integer (TrainSpec.seed is 0..2^31-1)."""
    msg = f"{federation_id}:{site_id}:{round_number}".encode()
    return int.from_bytes(hmac.new(secret, msg, hashlib.sha256).digest()[:8], "big") % (2**31)


def central_seed(secret: bytes, federation_id: int, round_number: int) -> int:
    """The seed of round ``round_number``'s central-DP noise (the server's: "site" 0, which no site is)."""
    return site_seed(secret, federation_id, 0, round_number)


def select_sites(
    ids: Sequence[int],
    *,
    round_number: int,
    per_round: int,
    seed: int,
    last_selected: Mapping[int, int | None] | None = None,
) -> list[int]:
    """``per_round`` of ``ids``: the ones selected longest ago first (never selected: first of all),
    ties in one seeded order per federation.

    With a fixed set of sites this is a seeded rotation: over any run of rounds no site takes part
    more than once more than any other (a per-round reshuffle of ties would let one site wait two
    rounds extra). Deterministic in (ids, round_number, per_round, seed, last_selected), so re-opening a round
    after a crash selects the same sites; when sites drop out, the ones waiting longest still go
    first. Returned sorted.
    """
    unique = sorted(set(ids))
    if per_round >= len(unique):
        return unique
    if per_round <= 0:
        return []
    order = list(unique)
    random.Random(f"cohort-select:{seed}").shuffle(order)
    start = ((round_number - 1) * per_round) % len(order)
    position = {site: (k - start) % len(order) for k, site in enumerate(order)}
    last = last_selected or {}
    order.sort(key=lambda i: (-1 if (when := last.get(i)) is None else int(when), position[i]))
    return sorted(order[:per_round])


def model_input_info(encoders: Mapping[str, Any]) -> dict[str, Any]:
    """What the model is built from, from the merged encoders alone (tabular or text)."""
    label = encoders["label"]
    n_outputs = len(label["classes"]) if label["kind"] == "classes" else 1
    if encoders.get("kind") == "text":
        return {**text_input_info(dict(encoders)), "n_outputs": n_outputs}
    return {"n_features": len(tabular_feature_names(dict(encoders))), "n_outputs": n_outputs}


def initial_state(fspec: FederationSpec, encoders: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The round-0 global model: ``fspec.train.model`` initialised from ``fspec.train.seed``."""
    seed_everything(fspec.train.seed)
    model = build(fspec.train.model.name, fspec.train.model.params, model_input_info(encoders))
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class LocalUpdate:
    delta: dict[str, torch.Tensor]
    n_train: int
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    clipped: bool = False
    norm_before_clip: float = 0.0
    epsilon: float | None = None  # local DP: the site's ε composed over all its rounds so far, this one included
    privacy_history: list[tuple[float, float, int]] = field(default_factory=list)
    dp_steps: int = 0  # local DP: the DP-SGD steps of this round (what the accountant composed)
    status: str = "completed"  # the engine's status ("budget_exhausted": the cap stopped it)


def _proximal_mu(fspec: FederationSpec) -> float:
    strategy = make_strategy(fspec.strategy.name, fspec.strategy.params)
    return float(strategy.client_config().get("proximal_mu", 0.0) or 0.0)


def site_privacy(
    fspec: FederationSpec, n_rows: int, history: Sequence[Sequence[float]] = ()
) -> tuple[DPConfig, list[tuple[float, float, int]]]:
    """Local DP for a site of ``n_rows`` rows (its dataset version's): the DP-SGD settings and the
    accountant history of its earlier rounds. The cap is the whole run's projection, i.e. what its
    ledger reserved at start: training stops before a step that would pass it."""
    from workers.federated.spec import dp_noise_multiplier, dp_sample_rate, projected_epsilon

    config = DPConfig(
        noise_multiplier=dp_noise_multiplier(fspec, n_rows),
        max_grad_norm=fspec.dp.max_grad_norm,
        delta=fspec.dp.delta,
        accountant=fspec.dp.accountant,
        max_epsilon=projected_epsilon(fspec, n_rows=n_rows),
        sample_rate=dp_sample_rate(fspec, n_rows),
    )
    return config, [(float(s), float(q), int(n)) for s, q, n in history]


def local_update(
    fspec: FederationSpec,
    prepared: Prepared,
    base: Mapping[str, torch.Tensor],
    *,
    seed: int,
    dp_rows: int | None = None,
    dp_history: Sequence[Sequence[float]] = (),
) -> LocalUpdate:
    """Train from ``base`` on the site's split: ``fspec.train.epochs`` epochs, or exactly
    ``fspec.local_steps`` optimizer steps when set; FedProx's proximal term when the strategy asks.

    Local DP (``dp.mode == "local"``): DP-SGD with the site's settings (:func:`site_privacy`;
    ``dp_rows`` is its dataset version's row count, ``dp_history`` the accountant history of its
    earlier rounds), and the update carries the composed ε."""
    privacy: DPConfig | None = None
    prior: list[tuple[float, float, int]] = []
    if fspec.dp.mode == "local":
        if dp_rows is None:
            raise ValueError("local DP needs the site's row count (dp_rows)")
        privacy, prior = site_privacy(fspec, dp_rows, dp_history)
    spec = replace(fspec.train, seed=seed % (2**31), checkpoint_every_steps=0)
    should_stop = None
    if fspec.local_steps:
        steps_per_epoch = max(1, math.ceil(math.ceil(len(prepared.x_train) / spec.batch_size) / spec.grad_accum_steps))
        spec = replace(spec, epochs=max(1, math.ceil(fspec.local_steps / steps_per_epoch)), early_stopping=None)
        calls = 0

        def should_stop() -> bool:
            nonlocal calls
            calls += 1
            return calls > int(fspec.local_steps or 0)

    result = train(spec, prepared, NullSink(), init_weights=base, should_stop=should_stop,
                   proximal_mu=_proximal_mu(fspec), privacy=privacy,
                   prior_privacy_history=prior)  # fmt: skip
    delta = {k: result.model_state[k].to(v.dtype) - v for k, v in base.items()}
    norm = update_l2_norm(delta)
    clipped = fspec.update_bound is not None and norm > fspec.update_bound
    if clipped:
        assert fspec.update_bound is not None
        delta = clip_update(delta, fspec.update_bound)
    metrics = {k: float(v) for k, v in result.final_metrics.items()}
    if "train_loss" in metrics:
        metrics["loss"] = metrics["train_loss"]
    if privacy is None:
        return LocalUpdate(delta, int(result.n_train), metrics, result.steps, bool(clipped), norm)
    # Under local DP only the privatised delta (and its accounting) leaves the site: the training
    # loss and metrics are computed on the private rows outside the DP guarantee, so none is sent.
    metrics = {}
    done = sum(n for _s, _q, n in result.privacy_history) - sum(int(n) for _s, _q, n in prior)
    return LocalUpdate(delta, int(result.n_train), metrics, result.steps, bool(clipped), norm,
                       epsilon=result.epsilon, privacy_history=list(result.privacy_history), dp_steps=done,
                       status=result.status)  # fmt: skip


def evaluate_state(fspec: FederationSpec, prepared: Prepared, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Validation loss and metrics of ``state`` on the site's validation split (CPU, fp32)."""
    cpu = torch.device("cpu")
    with run_context(fspec.train, cpu):
        model = build(fspec.train.model.name, fspec.train.model.params, prepared.input_info)
        model.load_state_dict(dict(state), strict=True)
        names = tuple(m for m in fspec.evaluation.metrics if m != "loss") or resolve_metrics(fspec.train, prepared)
        return {k: float(v) for k, v in evaluate(model, prepared, names, cpu).items()}


def local_only_metrics(
    fspec: FederationSpec,
    prep: Prepared,
    initial: Mapping[str, torch.Tensor],
    secret: bytes,
    federation_id: int,
    site_id: int,
    rows: int,
) -> dict[str, float]:
    """A site's local-only baseline, the model it would have without the federation: from the same
    initial model, the local work of every round back to back (``rounds × epochs``, or ``rounds ×
    local_steps`` steps), seeded like a round 0 of its own, with no proximal term and no update
    bound (there is no global model to stay near), under the same local DP settings when there are
    any; scored on its own validation split like the global model."""
    from workers.federated.spec import StrategySpec

    alone = replace(fspec, rounds=1, update_bound=None, strategy=StrategySpec())
    if fspec.local_steps:
        alone = replace(alone, local_steps=fspec.local_steps * fspec.rounds)
    else:
        alone = replace(alone, train=replace(fspec.train, epochs=fspec.train.epochs * fspec.rounds))
    upd = local_update(alone, prep, initial, seed=site_seed(secret, federation_id, site_id, 0),
                       dp_rows=rows if fspec.dp.mode == "local" else None)  # fmt: skip
    return evaluate_state(fspec, prep, {k: initial[k] + upd.delta[k] for k in initial})


def aggregate_round(
    fspec: FederationSpec,
    strategy: Strategy,
    base: Mapping[str, torch.Tensor],
    updates: Iterable[tuple[Mapping[str, torch.Tensor], int]],
    *,
    central_noise_seed: int | None = None,
    selected: int | None = None,
) -> dict[str, torch.Tensor]:
    """The next global state from the round's deltas, in the order given.

    Central DP (``dp.mode == "central"``): the deltas (already clipped to ``update_bound``) are
    summed with equal weight over the fixed denominator ``selected`` (the round's selected training
    sites: a missing update adds nothing), Gaussian noise of std ``sigma * update_bound /
    selected`` is added to every floating entry from a generator seeded with
    ``central_noise_seed`` (so a re-aggregation gives the same model, FL-6), and the strategy takes
    that noisy mean as the round's one update (FedAvg adds it; FedAdam and the like use it as their
    pseudo-gradient)."""
    if fspec.dp.mode == "central":
        updates = [_noisy_mean(fspec, base, list(updates), central_noise_seed, selected)]
    # A generator is consumed as it comes: the mean rules then hold one update at a time.
    new = strategy.aggregate(dict(base), updates, deltas=True)
    check_global_finite(new)
    return new


def _noisy_mean(
    fspec: FederationSpec,
    base: Mapping[str, torch.Tensor],
    updates: Sequence[tuple[Mapping[str, torch.Tensor], int]],
    seed: int | None,
    selected: int | None,
) -> tuple[dict[str, torch.Tensor], int]:
    from workers.federated.spec import central_noise_multiplier
    from workers.federated.strategies.base import accumulator_dtype, is_aggregated

    if seed is None or selected is None or selected < len(updates) or fspec.update_bound is None:
        raise ValueError("central DP needs the noise seed, the selected count and update_bound")
    bound = float(fspec.update_bound)
    for i, (delta, _n) in enumerate(updates):  # the sensitivity the noise is scaled to: enforce it
        if update_l2_norm(delta) > bound * (1 + 1e-6):
            raise ValueError(f"update {i} is above update_bound: central DP's sensitivity does not hold")
    std = central_noise_multiplier(fspec) * bound / selected
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, torch.Tensor] = {}
    for key, g in base.items():
        if not is_aggregated(g):  # integer buffers: as the mean rules do, the largest delta
            out[key] = torch.stack([d[key] for d, _n in updates]).amax(0) if updates else torch.zeros_like(g)
            continue
        acc = torch.zeros(g.shape, dtype=accumulator_dtype(g.dtype))
        for delta, _n in updates:
            acc += delta[key].to(acc.dtype)
        acc /= selected
        acc += torch.randn(g.shape, generator=gen, dtype=torch.float64).to(acc.dtype) * std
        out[key] = acc.to(g.dtype)
    return out, 1


def weighted_global(per_site: Mapping[Any, tuple[Mapping[str, float], int]]) -> dict[str, float]:
    """Each metric's mean over the sites that report it, weighted by their example counts."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for _site, (metrics, n) in sorted(per_site.items(), key=lambda kv: str(kv[0])):
        if n <= 0:
            continue
        for k, v in metrics.items():
            if isinstance(v, int | float) and math.isfinite(float(v)):
                sums[k] = sums.get(k, 0.0) + float(v) * n
                weights[k] = weights.get(k, 0) + n
    return {k: sums[k] / weights[k] for k in sorted(sums)}
