"""What a federation is asked to do, as a frozen, JSON-serialisable value.

A :class:`FederationSpec` embeds the :class:`~workers.training.spec.TrainSpec` each site runs per
round and adds the server's side: the aggregation strategy, rounds, site selection, quorum and
deadline, differential privacy, the update bound and evaluation. Like ``TrainSpec`` it round-trips
through JSON (``to_dict``/``from_dict``), :meth:`FederationSpec.spec_hash` names the federation's
mathematics, and :meth:`FederationSpec.validate` reports *every* problem at once as
:class:`~workers.training.spec.SpecError` ``fields`` keyed by dotted field path
(``strategy.params.f``, ``dp.mode``, ``train.optimizer.lr``).

Checks that need the number of sites (Krum's ``n >= 2f+3``, ``quorum <= n``, central DP's minimum
cohort) run only when ``validate`` is given ``n_sites``; checks that need a site's row count
(``delta < 1/N``) run in :meth:`FederationSpec.check_dp_against_rows`.

Strategy names, parameters, bounds and participant requirements come from the registry in
:mod:`workers.federated.strategies` alone (imported where used: it imports torch).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from workers.training.spec import METRICS, SpecError, TrainSpec

MAX_ROUNDS = 1000
MAX_SITES = 10_000
MAX_LOCAL_STEPS = 100_000
MAX_TOTAL_LOCAL_STEPS = 1_000_000  # rounds x local_steps
MAX_TOTAL_LOCAL_EPOCHS = 10_000  # rounds x train.epochs
MAX_DEADLINE_SECONDS = 7 * 24 * 3600
MAX_UPDATE_BOUND = 1e6
MAX_NOISE_MULTIPLIER = 100.0
MAX_TARGET_EPSILON = 1000.0
# FL-4's default cap: a local-DP federation may not plan to spend more than this ε on any dataset
# (a requested target above it, or a fixed noise multiplier whose projection passes it, is a 400).
DEFAULT_EPSILON_CAP = 8.0
MAX_DELTA = 0.01
MIN_CENTRAL_DP_PARTICIPANTS = 20  # below this, noise calibrated to one site's update swamps the mean

SELECTIONS = ("all", "fraction")
DP_MODES = ("none", "local", "central")
ACCOUNTANTS = ("rdp", "prv")
SAMPLINGS = ("poisson",)
EVALUATION_METRICS = ("loss", *METRICS)
REGISTER_CHOICES = ("final", "best", "none")
# Rules that average the (clipped) updates: the only ones central DP's Gaussian-mechanism accounting
# (DP-FedAvg, McMahan et al. 2018) covers. The robust rules pick or rank updates by their values.
AVERAGING_STRATEGIES = frozenset({"fedavg", "fedprox", "fedadagrad", "fedadam", "fedyogi"})
# Server optimizers that carry the participants' learning rate as ``eta_l``: it must be the
# train.optimizer.lr the sites actually use.
_CARRIES_ETA_L = frozenset({"fedadagrad", "fedadam", "fedyogi"})

# Where and how long a round waits, and what is measured, not what is computed: a federation may
# be resumed with another deadline or evaluation cadence under the same hash.
_UNHASHED = frozenset({"round_deadline_seconds", "evaluation"})


@dataclass(frozen=True)
class StrategySpec:
    """A registered aggregation rule (see ``workers.federated.strategies``) and its parameters."""

    name: str = "fedavg"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DPSpec:
    """Differential privacy. ``local``: DP-SGD at each site (record-level; Opacus-style per-sample
    clipping to ``max_grad_norm`` and Gaussian noise). ``central``: the server adds Gaussian noise to
    the mean of updates clipped to ``FederationSpec.update_bound`` (site-level, DP-FedAvg)."""

    mode: str = "none"  # "none" | "local" | "central"
    noise_multiplier: float | None = None  # None: calibrated from target_epsilon
    max_grad_norm: float = 1.0  # "local": per-sample gradient clip
    target_epsilon: float | None = None  # the budget the run may not exceed
    delta: float = 1e-6
    accountant: str = "rdp"  # "rdp" | "prv"
    sampling: str = "poisson"  # the sampling the accountant assumes (records for local, sites for central)


@dataclass(frozen=True)
class EvaluationSpec:
    """Evaluate the global model after every ``every_rounds`` rounds (and after the last)."""

    every_rounds: int = 1
    # True: the federation names one site with role "central", a dataset of the coordinator's own,
    # on which the platform scores every round's global model (all its rows: it never trains and
    # sends nothing in round 0); its metrics are reported apart and "best" is chosen on them.
    central: bool = False
    metrics: tuple[str, ...] = ()  # empty: the task's defaults
    # Which global model enters the coordinator's registry at the end: the last round's ("final"),
    # the one that scored best on ``best_metric`` (on the central set with ``central``, else at the
    # sites) ("best"), or none.
    register: str = "final"  # "final" | "best" | "none"
    best_metric: str = "loss"  # lower is better for loss/mse/rmse/mae, higher for the others
    # At the final evaluation each training site also trains a local-only model (same initial
    # model, same local work) and the report compares it with the global one, per site.
    local_baseline: bool = False


def _default_train() -> TrainSpec:
    return TrainSpec(epochs=1)


@dataclass(frozen=True)
class FederationSpec:
    train: TrainSpec = field(default_factory=_default_train)  # one site's local training per round
    local_steps: int | None = None  # None: train.epochs epochs per round; else this many optimizer steps
    strategy: StrategySpec = field(default_factory=StrategySpec)
    rounds: int = 10
    select: str = "all"  # "all" | "fraction"
    fraction: float = 1.0
    min_participants: int = 2
    quorum: int | None = None  # updates that close a round; None: every selected site
    round_deadline_seconds: int = 3600
    dp: DPSpec = field(default_factory=DPSpec)
    update_bound: float | None = None  # L2 bound on each site's delta (sites clip; server rejects above)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    seed: int = 0  # site selection and other server-side randomness (train.seed seeds local training)

    # --- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        d["evaluation"]["metrics"] = list(self.evaluation.metrics)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FederationSpec:
        """Build a spec from JSON data; unknown keys and wrong shapes raise :class:`SpecError`.

        A ``train`` object without ``epochs`` gets 1 (one local epoch per round), not TrainSpec's 10.
        """
        errors: dict[str, list[str]] = {}
        if not isinstance(data, dict):
            raise SpecError("A federation spec is a JSON object.", {"": ["Expected an object."]})

        def sub(key: str, klass: type[Any]) -> Any:
            raw = data.get(key)
            if raw is None:
                return klass()
            if not isinstance(raw, dict):
                errors.setdefault(key, []).append("Expected an object.")
                return klass()
            known = {f.name for f in fields(klass)}
            for k in raw:
                if k not in known:
                    errors.setdefault(f"{key}.{k}", []).append("Unknown field.")
            kwargs = {k: v for k, v in raw.items() if k in known}
            if klass is StrategySpec and "params" in kwargs and not isinstance(kwargs["params"], dict):
                errors.setdefault("strategy.params", []).append("Expected an object.")
                kwargs.pop("params")
            if klass is EvaluationSpec and "metrics" in kwargs:
                m = kwargs["metrics"]
                if not isinstance(m, list | tuple) or not all(isinstance(x, str) for x in m):
                    errors.setdefault("evaluation.metrics", []).append("Expected a list of metric names.")
                    kwargs.pop("metrics")
                else:
                    kwargs["metrics"] = tuple(m)
            return klass(**kwargs)

        top = {f.name for f in fields(cls)}
        for k in data:
            if k not in top:
                errors.setdefault(k, []).append("Unknown field.")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in top}
        raw_train = data.get("train")
        if raw_train is None:
            kwargs["train"] = _default_train()
        elif not isinstance(raw_train, dict):
            errors.setdefault("train", []).append("Expected an object.")
            kwargs["train"] = _default_train()
        else:
            try:
                kwargs["train"] = TrainSpec.from_dict({"epochs": 1, **raw_train})
            except SpecError as exc:
                for path, messages in exc.fields.items():
                    errors.setdefault(_join("train", path), []).extend(messages)
                kwargs["train"] = _default_train()
        kwargs["strategy"] = sub("strategy", StrategySpec)
        kwargs["dp"] = sub("dp", DPSpec)
        kwargs["evaluation"] = sub("evaluation", EvaluationSpec)
        if errors:
            raise SpecError("The federation spec is not valid.", errors)
        return cls(**kwargs)

    def spec_hash(self) -> str:
        """SHA-256 of the canonical JSON of the fields that change the federation's mathematics.

        ``train`` enters as its own :meth:`TrainSpec.spec_hash` (so its device and logging fields
        do not count), strategy parameters with their defaults filled in (``{}`` and
        ``{"beta": 0.2}`` name the same trimmed mean), and ``dp`` as ``{"mode": "none"}`` when off.
        """
        d = {k: v for k, v in self.to_dict().items() if k not in _UNHASHED}
        d["train"] = self.train.spec_hash()
        d["strategy"] = {"name": self.strategy.name, "params": _canonical_params(self.strategy)}
        if self.dp.mode == "none":
            d["dp"] = {"mode": "none"}
        blob = json.dumps({"federation": d}, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    # --- derived values (one formula for the validator and the round engine) ----------------
    def participants_per_round(self, n_sites: int) -> int:
        """Sites selected each round out of ``n_sites`` available.

        ``"all"``: every site. ``"fraction"``: ``max(floor(fraction * n), min_participants)`` as
        Flower's ``num_fit_clients``, at most ``n``.
        """
        if self.select == "all":
            return n_sites
        return min(n_sites, max(int(self.fraction * n_sites), self.min_participants))

    def min_updates_per_round(self, n_sites: int | None = None) -> int | None:
        """The fewest updates a round may aggregate: ``quorum``, or every selected site without one.

        ``None`` when that depends on ``n_sites`` and it is not given. Every participant-count
        requirement (Krum's ``n >= 2f+3``, central DP's cohort) is checked at this number; they all
        grow easier with more updates.
        """
        if self.quorum is not None:
            return self.quorum
        return None if n_sites is None else self.participants_per_round(n_sites)

    def resolved_strategy_params(self) -> dict[str, Any]:
        """The params to build the strategy with: as given, plus ``eta_l = train.optimizer.lr`` for
        the server optimizers that carry the participants' learning rate and were not given one."""
        params = dict(self.strategy.params)
        if self.strategy.name in _CARRIES_ETA_L and "eta_l" not in params:
            params["eta_l"] = self.train.optimizer.lr
        return params

    # --- checks -----------------------------------------------------------------------------
    def validate(self, n_sites: int | None = None) -> None:
        """Raise :class:`SpecError` listing every problem; return ``None`` when the spec can run.

        Args:
            n_sites: sites taking part in the federation; ``None`` runs only the checks that do
                not depend on it.

        Raises:
            SpecError: with ``fields`` mapping each dotted field path to its messages.
            ValueError: ``n_sites`` is not a positive integer (a caller's mistake, not the spec's).
        """
        if n_sites is not None and (not _is_int(n_sites) or n_sites < 1):
            raise ValueError(f"n_sites must be a positive integer or None, got {n_sites!r}")
        e: dict[str, list[str]] = {}

        def bad(path: str, msg: str) -> None:
            e.setdefault(path, []).append(msg)

        def int_in(path: str, v: Any, lo: int, hi: int, *, optional: bool = False) -> bool:
            if optional and v is None:
                return True
            if not _is_int(v) or not lo <= v <= hi:
                bad(path, f"Expected an integer from {lo} to {hi}{' or null' if optional else ''}.")
                return False
            return True

        def number_in(path: str, v: Any, lo: float, hi: float, *, optional: bool = False) -> bool:
            """``lo < v <= hi`` (the lower bound excluded: every bounded number here must be > 0)."""
            if optional and v is None:
                return True
            if not _is_number(v) or not lo < v <= hi:
                bad(path, f"Expected a number > {lo:g} and <= {hi:g}{' or null' if optional else ''}.")
                return False
            return True

        # The embedded training spec reports under train.*.
        try:
            self.train.validate()
        except SpecError as exc:
            for path, messages in exc.fields.items():
                for message in messages:
                    bad(_join("train", path), message)
        t = self.train
        if t.privacy is not None:
            bad("train.privacy", "A federation's privacy is its dp section (local or central), not the site's spec.")
        if t.early_stopping is not None:
            bad("train.early_stopping", "Sites do not stop early within a round; a federation stops after its rounds.")

        rounds_ok = int_in("rounds", self.rounds, 1, MAX_ROUNDS)
        steps_ok = int_in("local_steps", self.local_steps, 1, MAX_LOCAL_STEPS, optional=True)
        if self.local_steps is not None and t.epochs != 1:
            bad("train.epochs", "With local_steps set a round runs that many steps; leave train.epochs at 1.")
        if rounds_ok and steps_ok and self.local_steps is not None:
            if self.rounds * self.local_steps > MAX_TOTAL_LOCAL_STEPS:
                bad(
                    "rounds",
                    f"rounds × local_steps = {self.rounds * self.local_steps} exceeds {MAX_TOTAL_LOCAL_STEPS} "
                    "local steps per site.",
                )
        elif (
            rounds_ok
            and self.local_steps is None
            and _is_int(t.epochs)
            and self.rounds * t.epochs > MAX_TOTAL_LOCAL_EPOCHS
        ):
            bad(
                "rounds",
                f"rounds × train.epochs = {self.rounds * t.epochs} exceeds {MAX_TOTAL_LOCAL_EPOCHS} "
                "local epochs per site.",
            )

        # Selection, quorum, deadline.
        if self.select not in SELECTIONS:
            bad("select", f"Unknown selection {self.select!r}; one of {', '.join(SELECTIONS)}.")
        fraction_ok = number_in("fraction", self.fraction, 0.0, 1.0)
        if fraction_ok and self.select == "all" and self.fraction != 1:
            bad("fraction", "select 'all' takes every site; use select 'fraction' to sample a fraction.")
        min_ok = int_in("min_participants", self.min_participants, 1, MAX_SITES)
        quorum_ok = int_in("quorum", self.quorum, 1, MAX_SITES, optional=True)
        int_in("round_deadline_seconds", self.round_deadline_seconds, 1, MAX_DEADLINE_SECONDS)
        int_in("seed", self.seed, 0, 2**31 - 1)
        bound_ok = number_in("update_bound", self.update_bound, 0.0, MAX_UPDATE_BOUND, optional=True)

        # k: the fewest updates a round may aggregate, where it is known (None otherwise). A quorum
        # above what a round selects is reported, and the checks below then use what is selected.
        selection_ok = fraction_ok and min_ok and self.select in SELECTIONS
        per_round = self.participants_per_round(n_sites) if selection_ok and n_sites is not None else None
        k: int | None = per_round
        if n_sites is not None and min_ok and self.min_participants > n_sites:
            bad("min_participants", f"min_participants = {self.min_participants} exceeds the {n_sites} sites.")
        if quorum_ok and self.quorum is not None:
            k = self.quorum
            if n_sites is not None and self.quorum > n_sites:
                bad("quorum", f"quorum = {self.quorum} exceeds the {n_sites} sites.")
            elif per_round is not None and self.quorum > per_round:
                bad("quorum", f"quorum = {self.quorum} exceeds the {per_round} sites selected each round.")
            k = min(k, per_round if per_round is not None else n_sites if n_sites is not None else k)
        elif not quorum_ok:
            k = None

        # Strategy: the name, its params, and its participant-count requirements at k.
        s = self.strategy
        strategy_known = isinstance(s.name, str) and s.name in _strategy_names()
        if not strategy_known:
            bad("strategy.name", f"Unknown strategy {s.name!r}; one of {', '.join(sorted(_strategy_names()))}.")
        elif not isinstance(s.params, dict):
            bad("strategy.params", "Expected an object.")
        else:
            problems = _param_problems(s.name, s.params)
            for param, messages in problems.items():
                for message in messages:
                    bad(_join("strategy.params", param), message)
            if "eta_l" in s.params and s.name in _CARRIES_ETA_L and s.params["eta_l"] != t.optimizer.lr:
                bad(
                    "strategy.params.eta_l",
                    "eta_l is the sites' learning rate: leave it out or equal train.optimizer.lr.",
                )
            if not problems and k is not None:
                for param, message in _requirement_problems(s.name, s.params, k):
                    bad(_join("strategy.params", param), f"{message}; a round may aggregate as few as {k} updates.")

        # Differential privacy.
        dp = self.dp
        if dp.mode not in DP_MODES:
            bad("dp.mode", f"Unknown mode {dp.mode!r}; one of {', '.join(DP_MODES)}.")
        if dp.accountant not in ACCOUNTANTS:
            bad("dp.accountant", f"Unknown accountant {dp.accountant!r}; one of {', '.join(ACCOUNTANTS)}.")
        if dp.sampling not in SAMPLINGS:
            bad("dp.sampling", f"Unknown sampling {dp.sampling!r}; one of {', '.join(SAMPLINGS)}.")
        number_in("dp.noise_multiplier", dp.noise_multiplier, 0.0, MAX_NOISE_MULTIPLIER, optional=True)
        number_in("dp.max_grad_norm", dp.max_grad_norm, 0.0, MAX_UPDATE_BOUND)
        number_in("dp.target_epsilon", dp.target_epsilon, 0.0, MAX_TARGET_EPSILON, optional=True)
        delta_ok = number_in("dp.delta", dp.delta, 0.0, MAX_DELTA)
        if dp.mode == "none":
            for name in ("noise_multiplier", "target_epsilon"):
                if getattr(dp, name) is not None:
                    bad(f"dp.{name}", "Only with dp.mode 'local' or 'central'.")
        elif dp.mode in DP_MODES:
            if dp.noise_multiplier is None and dp.target_epsilon is None:
                bad("dp.noise_multiplier", f"{dp.mode} DP needs noise_multiplier or target_epsilon (or both).")
            procs = t.world_size * t.nnodes if _is_int(t.world_size) and _is_int(t.nnodes) else 1
            if procs > 1:
                bad("dp.mode", "DP needs one training process per site (train.world_size and train.nnodes of 1).")
        if dp.mode == "local":
            if (
                dp.target_epsilon is not None
                and _is_number(dp.target_epsilon)
                and dp.target_epsilon > DEFAULT_EPSILON_CAP
            ):
                bad("dp.target_epsilon", f"Above the platform's cap of epsilon <= {DEFAULT_EPSILON_CAP:g} (FL-4).")
            if _is_int(t.grad_accum_steps) and t.grad_accum_steps != 1:
                bad("train.grad_accum_steps", "DP-SGD takes one Poisson batch per step; use 1.")
            if t.precision == "fp16":
                bad(
                    "train.precision",
                    "DP-SGD trains in fp32 (bf16 runs as fp32); fp16 is refused.",
                )
            for problem in _dp_model_problems(t):
                bad("train.model", f"DP-SGD cannot train this model (Opacus ModuleValidator): {problem}")
        if dp.mode == "central":
            if self.update_bound is None and bound_ok:
                bad("update_bound", "Central DP needs update_bound: it is the sensitivity the noise is scaled to.")
            if strategy_known and s.name not in AVERAGING_STRATEGIES:
                bad(
                    "dp.mode",
                    f"Central DP's accounting covers the averaging rules ({', '.join(sorted(AVERAGING_STRATEGIES))}),"
                    f" not {s.name!r}.",
                )
            if k is not None and k < MIN_CENTRAL_DP_PARTICIPANTS:
                bad(
                    "dp.mode",
                    f"Central DP needs at least {MIN_CENTRAL_DP_PARTICIPANTS} updates per round; "
                    f"this federation may aggregate {k}.",
                )
            if n_sites is not None and delta_ok and dp.delta >= 1 / n_sites:
                bad("dp.delta", f"Central DP protects sites: delta must be below 1/{n_sites} sites.")

        # Evaluation.
        ev = self.evaluation
        if (
            int_in("evaluation.every_rounds", ev.every_rounds, 1, MAX_ROUNDS)
            and rounds_ok
            and ev.every_rounds > self.rounds
        ):
            bad("evaluation.every_rounds", "At most rounds (the last round is always evaluated).")
        if not isinstance(ev.central, bool):
            bad("evaluation.central", "Expected true or false.")
        if not isinstance(ev.metrics, tuple):
            bad("evaluation.metrics", "Expected a list of metric names.")
        else:
            for m in ev.metrics:
                if m not in EVALUATION_METRICS:
                    bad("evaluation.metrics", f"Unknown metric {m!r}; one of {', '.join(EVALUATION_METRICS)}.")
            if len(set(ev.metrics)) != len(ev.metrics):
                bad("evaluation.metrics", "A metric is listed twice.")
        if not isinstance(ev.local_baseline, bool):
            bad("evaluation.local_baseline", "Expected true or false.")
        elif ev.local_baseline and dp.mode == "local":
            bad("evaluation.local_baseline", "Under local DP a local-only model would spend privacy budget the "
                "ledgers did not reserve; compare in simulation mode instead.")  # fmt: skip
        if ev.register not in REGISTER_CHOICES:
            bad("evaluation.register", f"One of {', '.join(REGISTER_CHOICES)}.")
        if ev.best_metric not in EVALUATION_METRICS:
            bad("evaluation.best_metric", f"Unknown metric {ev.best_metric!r}; one of {', '.join(EVALUATION_METRICS)}.")
        elif ev.register == "best" and ev.metrics and ev.best_metric not in ev.metrics and ev.best_metric != "loss":
            bad("evaluation.best_metric", f"{ev.best_metric!r} is not among evaluation.metrics.")
        if e:
            raise SpecError("The federation spec is not valid.", e)

    def _check_central_cap(self) -> None:
        try:
            eps = central_epsilon(self, self.rounds)
        except ValueError as exc:
            raise SpecError("The federation's DP cannot be met.", {"dp.target_epsilon": [str(exc)]}) from None
        cap = min(DEFAULT_EPSILON_CAP, self.dp.target_epsilon or DEFAULT_EPSILON_CAP)
        if eps > cap * 1.0001:
            raise SpecError(
                "The federation's DP does not fit the cap.",
                {"dp.noise_multiplier": [f"The run projects a site-level epsilon = {eps:.3f}, above "
                                         f"{'the target' if self.dp.target_epsilon else 'the platform cap'} {cap:g}: "
                                         "raise noise_multiplier or lower rounds."]},
            )  # fmt: skip

    def check_dp_against_rows(self, n_rows: int) -> None:
        """The DP checks that need a site's training rows ``N``: call with the smallest site's.

        Local DP protects records, so ``delta < 1/N`` and Poisson sampling at rate
        ``train.batch_size / N`` needs ``N >= train.batch_size``. Central DP protects sites, and
        ``validate(n_sites)`` checks its ``delta < 1/n_sites``; nothing here depends on rows then.

        Raises:
            SpecError: ``dp.delta`` or ``train.batch_size``.
            ValueError: ``n_rows`` is not a positive integer.
        """
        if not _is_int(n_rows) or n_rows < 1:
            raise ValueError(f"n_rows must be a positive integer, got {n_rows!r}")
        if self.dp.mode == "central":
            self._check_central_cap()
            return
        if self.dp.mode != "local":
            return
        e: dict[str, list[str]] = {}
        if _is_number(self.dp.delta) and self.dp.delta >= 1 / n_rows:
            e.setdefault("dp.delta", []).append(f"delta must be below 1/N = 1/{n_rows} (the site's rows).")
        if _is_int(self.train.batch_size) and self.train.batch_size > n_rows:
            e.setdefault("train.batch_size", []).append(
                f"Poisson sampling rate batch_size/N = {self.train.batch_size}/{n_rows} exceeds 1."
            )
        if not e:
            try:
                eps = projected_epsilon(self, n_rows=n_rows)
            except ValueError as exc:  # a target the accountant cannot meet with these steps
                e.setdefault("dp.target_epsilon", []).append(str(exc))
            else:
                cap = min(DEFAULT_EPSILON_CAP, self.dp.target_epsilon or DEFAULT_EPSILON_CAP)
                if eps > cap * 1.0001:
                    e.setdefault("dp.noise_multiplier", []).append(
                        f"On a site of {n_rows} rows the run projects epsilon = {eps:.3f}, above "
                        f"{'the target' if self.dp.target_epsilon else 'the platform cap'} {cap:g}: "
                        "raise noise_multiplier or lower rounds/steps."
                    )
        if e:
            raise SpecError("The federation's DP does not fit the site's data.", e)


# --- local DP: one site's sampling, steps, noise and projected ε ----------------------------------
# ``n_rows`` is the site's dataset version's row count, known when the federation starts. The
# Poisson rate is fixed from it (q = batch_size / n_rows; the subsampled-Gaussian bound depends on
# q, sigma and the steps alone), and a round's steps are counted from it too (``epochs`` mode:
# epochs * ceil(n_rows / batch_size), an upper bound on what the train split takes), so the ε
# reserved at start bounds what the site spends, and equals it with ``local_steps``.


def dp_sample_rate(spec: FederationSpec, n_rows: int) -> float:
    return min(1.0, spec.train.batch_size / max(1, n_rows))


def dp_steps_per_round(spec: FederationSpec, n_rows: int) -> int:
    if spec.local_steps:
        return int(spec.local_steps)
    return int(spec.train.epochs) * math.ceil(max(1, n_rows) / spec.train.batch_size)


def dp_noise_multiplier(spec: FederationSpec, n_rows: int) -> float:
    """The site's sigma: ``dp.noise_multiplier``, or the smallest that keeps all rounds within
    ``dp.target_epsilon`` (Opacus' calibration with the spec's accountant).

    Raises:
        ValueError: the target cannot be met (Opacus' message).
    """
    from workers.training.privacy import calibrate

    if spec.dp.noise_multiplier is not None:
        return float(spec.dp.noise_multiplier)
    assert spec.dp.target_epsilon is not None, "validate() requires noise_multiplier or target_epsilon"
    return calibrate(spec.dp.target_epsilon, spec.dp.delta, dp_sample_rate(spec, n_rows),
                     spec.rounds * dp_steps_per_round(spec, n_rows), spec.dp.accountant)  # fmt: skip


# --- central DP (DP-FedAvg, McMahan et al. 2018): one site's whole update is the unit ----------
# The server adds N(0, (sigma * S / m)^2) to the sum of the round's deltas (each clipped to
# S = update_bound) over the fixed denominator m = the sites selected for the round. The site
# selection is a seeded rotation, not Poisson sampling, so the accountant takes q = 1 (no
# amplification by sampling): a site's ε after k rounds is the Gaussian mechanism composed k times.


def central_noise_multiplier(spec: FederationSpec) -> float:
    """``dp.noise_multiplier``, or the smallest that keeps all rounds within ``dp.target_epsilon``."""
    from workers.training.privacy import calibrate

    if spec.dp.noise_multiplier is not None:
        return float(spec.dp.noise_multiplier)
    assert spec.dp.target_epsilon is not None, "validate() requires noise_multiplier or target_epsilon"
    return calibrate(spec.dp.target_epsilon, spec.dp.delta, 1.0, spec.rounds, spec.dp.accountant)


def central_epsilon(spec: FederationSpec, rounds_participated: int) -> float:
    """A site's ε at ``dp.delta`` after its update went into ``rounds_participated`` noisy means."""
    from workers.training.privacy import epsilon_for

    return epsilon_for([(central_noise_multiplier(spec), 1.0, rounds_participated)], spec.dp.delta,
                       spec.dp.accountant)  # fmt: skip


def projected_epsilon(spec: FederationSpec, *, n_rows: int) -> float:
    """ε at ``dp.delta`` a site of ``n_rows`` rows spends if it trains in every round (local DP),
    from Opacus' RDP or PRV accountant; what its dataset's ledger reserves at start."""
    from workers.training.privacy import epsilon_for

    if spec.dp.mode == "central":  # site-level: the same for every dataset, rows do not matter
        return central_epsilon(spec, spec.rounds)
    if spec.dp.mode != "local":
        raise ValueError(f"projected_epsilon is for dp.mode 'local' or 'central', not {spec.dp.mode!r}")
    sigma = dp_noise_multiplier(spec, n_rows)
    steps = spec.rounds * dp_steps_per_round(spec, n_rows)
    return epsilon_for([(sigma, dp_sample_rate(spec, n_rows), steps)], spec.dp.delta, spec.dp.accountant)


def dp_model_problems(train: TrainSpec) -> list[str]:
    """Public name of :func:`_dp_model_problems` (training jobs check their DP model with it)."""
    return _dp_model_problems(train)


def _dp_model_problems(train: TrainSpec) -> list[str]:
    """Opacus' ModuleValidator on the spec's model, built for a small stand-in tabular input (the
    layers, not the sizes, decide it). A model that needs other inputs is checked again on the
    real one by the engine, before its first step."""
    from workers.training.models import build
    from workers.training.privacy import model_problems

    try:
        model = build(train.model.name, train.model.params, {"n_features": 4, "n_outputs": 2})
    except Exception:  # unknown name or bad params: reported by TrainSpec's own checks
        return []
    return model_problems(model)


# --- strategy registry ------------------------------------------------------------------------
# The one source of names, parameters, bounds and participant requirements is
# ``workers.federated.strategies`` (imported where used: it imports torch).


def _strategy_names() -> list[str]:
    from workers.federated.strategies import STRATEGIES

    return list(STRATEGIES)


def _param_problems(name: str, raw: Mapping[str, Any]) -> dict[str, list[str]]:
    """Unknown keys and out-of-range values, by parameter name (every problem, not the first)."""
    from workers.federated.strategies import STRATEGIES

    table = STRATEGIES[name].PARAMS
    out: dict[str, list[str]] = {}
    known = [p.name for p in table]
    for key in raw:
        if key not in known:
            out.setdefault(str(key), []).append(f"Unknown parameter; known: {', '.join(known) or 'none'}.")
    for p in table:
        try:
            p.check(name, raw.get(p.name, p.default))
        except ValueError as exc:
            out.setdefault(p.name, []).append(str(exc))
    return out


def _requirement_problems(name: str, raw: Mapping[str, Any], n: int) -> list[tuple[str, str]]:
    """(parameter, message) for each participant-count requirement violated at ``n``."""
    from workers.federated.strategies import make_strategy

    return make_strategy(name, raw).violations(n)


def _canonical_params(strategy: StrategySpec) -> Any:
    """Params with the registry's defaults filled in and float params as floats (for the hash)."""
    from workers.federated.strategies import STRATEGIES

    if strategy.name not in STRATEGIES or not isinstance(strategy.params, dict):
        return strategy.params
    out: dict[str, Any] = dict(strategy.params)
    for p in STRATEGIES[strategy.name].PARAMS:
        value: Any = out.get(p.name, p.default)
        out[p.name] = float(value) if p.kind is float and _is_number(value) else value
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    try:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if path else prefix


__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_EPSILON_CAP",
    "DP_MODES",
    "EVALUATION_METRICS",
    "SAMPLINGS",
    "SELECTIONS",
    "DPSpec",
    "EvaluationSpec",
    "FederationSpec",
    "SpecError",
    "StrategySpec",
    "dp_noise_multiplier",
    "dp_sample_rate",
    "dp_steps_per_round",
    "projected_epsilon",
]
