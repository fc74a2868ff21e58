"""Simulation mode: a federation spec run in one process over virtual sites.

One table (the coordinator's own data, or a CSV) is split into seeded virtual sites, IID or
label-skewed by a Dirichlet(α) draw per class, and the spec's rounds run with the very functions a
hosted federation's workers and ``advance`` call, in the same order: round 0's statistics merged
into global encoders (training sites only, in site order), the seeded selection, each selected
site's evaluation of the base model and local update with its HMAC seed, update validation, the
strategy over the deltas in site order, and the final evaluation. So given the same sites, the same
federation secret, id and site ids, a simulation reaches ``torch.equal`` weights with a hosted run
(tested against real workers). Nothing here touches Django, storage or the network.

Use it to try a spec before asking owners to approve it: ``POST .../federations/simulate/`` runs it
as a training job on the coordinator's own dataset version; ``python -m workers.federated.simulate``
runs it from a CSV (see ``--help``). With ``local_baseline`` each training site also trains a
local-only model for the same amount of local work, and the result compares them per site.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from workers.federated.rounds import (
    aggregate_round,
    central_seed,
    evaluate_state,
    initial_state,
    local_only_metrics,
    local_update,
    model_input_info,
    select_sites,
    site_seed,
    weighted_global,
)
from workers.federated.spec import FederationSpec, central_epsilon
from workers.federated.stats import (
    compare_schemas,
    labelled_rows,
    merge_round_0,
    site_schema_summary,
    site_statistics,
)
from workers.federated.strategies import make_strategy
from workers.federated.validate import UpdateRejected, update_l2_norm, validate_update
from workers.schema import DatasetSchema
from workers.training.data import DataError, Prepared, prepare_with_encoders
from workers.training.privacy import compose
from workers.training.spec import SpecError

PARTITIONS = ("iid", "dirichlet")
MAX_SITES = 100
MIN_SITE_ROWS = 10  # every virtual site gets at least this many rows (a Dirichlet draw is redrawn)
DIRICHLET_TRIES = 100
MAX_UPDATE_BYTES = 512 * 1024 * 1024  # the platform's default COHORT_FL_MAX_UPDATE_BYTES


class SimulationError(ValueError):
    """Bad simulation input (split, sites, data), with the field it is about."""

    def __init__(self, message: str, field_name: str = "") -> None:
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True)
class SplitSpec:
    """How one table becomes virtual sites."""

    sites: int = 3
    partition: str = "iid"  # "iid" | "dirichlet"
    alpha: float = 0.5  # Dirichlet concentration: small = strongly label-skewed
    seed: int = 0
    evaluation_sites: int = 0  # of ``sites``, the last ones only evaluate (never train)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitSpec:
        known = {"sites", "partition", "alpha", "seed", "evaluation_sites"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SimulationError(f"Unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}.", unknown[0])
        split = cls(**{k: data[k] for k in known if k in data})
        split.validate()
        return split

    def validate(self) -> None:
        if not _is_int(self.sites) or not 2 <= self.sites <= MAX_SITES:
            raise SimulationError(f"An integer from 2 to {MAX_SITES}.", "sites")
        if self.partition not in PARTITIONS:
            raise SimulationError(f"One of {', '.join(PARTITIONS)}.", "partition")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not 0 < self.alpha <= 1e6:
            raise SimulationError("A number above 0 (at most 1e6).", "alpha")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**31:
            raise SimulationError("An integer from 0 to 2^31-1.", "seed")
        if not _is_int(self.evaluation_sites) or not 0 <= self.evaluation_sites <= self.sites - 2:
            raise SimulationError("An integer from 0 to sites-2 (at least two sites train).", "evaluation_sites")

    def to_dict(self) -> dict[str, Any]:
        return {"sites": self.sites, "partition": self.partition, "alpha": self.alpha, "seed": self.seed,
                "evaluation_sites": self.evaluation_sites}  # fmt: skip


@dataclass
class VirtualSite:
    site_id: int  # the id its training seeds are derived from (a hosted run: FederationSite.pk)
    label: str
    table: pa.Table
    role: str = "train"  # "train" | "evaluate"
    n_rows: int | None = None  # the version's row count local DP accounts with (None: the table's)


@dataclass
class SimulationResult:
    state: dict[str, torch.Tensor]
    encoders: dict[str, Any]
    final_metrics: dict[str, float]
    per_site: dict[str, dict[str, float]]
    evaluation_only: dict[str, Any]
    rounds: list[dict[str, Any]]
    local_only: dict[str, dict[str, float]] = field(default_factory=dict)
    sites: list[dict[str, Any]] = field(default_factory=list)
    model_digest: str = ""
    seconds: float = 0.0
    status: str = "completed"  # "completed" | "stopped"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite metrics as None)."""
        return finite_json(
            {
                "status": self.status,
                "final_metrics": self.final_metrics,
                "per_site": self.per_site,
                "evaluation_only": self.evaluation_only,
                "local_only": self.local_only,
                "rounds": self.rounds,
                "sites": self.sites,
                "model_digest": self.model_digest,
                "seconds": round(self.seconds, 3),
            }
        )


NO_CENTRAL_SET = (
    "A simulation has no central set (a hosted federation names one as a site with role 'central'): "
    "hold out virtual sites with split.evaluation_sites instead (their metrics are evaluation_only)."
)


def finite_json(v: Any) -> Any:
    """``v`` with every non-finite float (an AUROC on a one-class split) as None: strict JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: finite_json(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [finite_json(x) for x in v]
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def split_sites(table: pa.Table, schema: DatasetSchema, split: SplitSpec) -> list[VirtualSite]:
    """The table's labelled rows cut into ``split.sites`` disjoint virtual sites (``site-1``…).

    ``iid``: one seeded permutation, cut into near-equal parts. ``dirichlet``: for every class,
    its rows (seeded order) are dealt to the sites in proportions drawn from Dirichlet(α·1), the
    usual label-skew benchmark (Hsu et al. 2019); a draw leaving a site under ``MIN_SITE_ROWS``
    rows is redrawn. Rows keep their table order within a site."""
    split.validate()
    if not schema.label:
        raise SimulationError("The dataset has no label column to train on.", "dataset")
    table, problem = labelled_rows(table, schema)
    n = table.num_rows
    if n < split.sites * MIN_SITE_ROWS:
        raise SimulationError(
            f"{n} labelled rows cannot make {split.sites} sites of at least {MIN_SITE_ROWS} rows.", "sites"
        )
    rng = np.random.default_rng(split.seed)
    if split.partition == "iid":
        parts = [np.sort(p) for p in np.array_split(rng.permutation(n), split.sites)]
    else:
        if problem != "classification":
            raise SimulationError("A Dirichlet label split needs a classification label; use iid.", "partition")
        labels = np.asarray([str(v) for v in table.column(schema.label).to_pylist()])
        by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in sorted(set(labels.tolist()))]
        for _ in range(DIRICHLET_TRIES):
            buckets: list[list[int]] = [[] for _ in range(split.sites)]
            for idx in by_class:
                share = rng.dirichlet(np.full(split.sites, float(split.alpha)))
                cuts = (np.cumsum(share)[:-1] * len(idx)).astype(int)
                for b, chunk in zip(buckets, np.split(idx, cuts), strict=True):
                    b.extend(chunk.tolist())
            if min(len(b) for b in buckets) >= MIN_SITE_ROWS:
                break
        else:
            raise SimulationError(
                f"alpha {split.alpha} leaves a site under {MIN_SITE_ROWS} rows in {DIRICHLET_TRIES} draws; "
                "raise alpha or use fewer sites.",
                "alpha",
            )
        parts = [np.sort(np.asarray(b, dtype=np.int64)) for b in buckets]
    first_eval = split.sites - split.evaluation_sites
    return [
        VirtualSite(
            site_id=i + 1,
            label=f"site-{i + 1}",
            table=table.take(pa.array(p)),
            role="evaluate" if i >= first_eval else "train",
        )
        for i, p in enumerate(parts)
    ]


def simulation_secret(fspec: FederationSpec, split: SplitSpec) -> bytes:
    """A simulation's seed secret: derived from the spec and split, so a rerun is reproducible.
    (A hosted federation's secret is random and never leaves the server.)"""
    return hashlib.sha256(f"cohort-simulation:{fspec.spec_hash()}:{json.dumps(split.to_dict())}".encode()).digest()


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in key order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run(
    fspec: FederationSpec,
    sites: Sequence[VirtualSite],
    schema: DatasetSchema,
    *,
    secret: bytes,
    federation_id: int = 0,
    local_baseline: bool = False,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SimulationResult:
    """Run ``fspec`` over ``sites`` as a hosted federation would (see the module docstring)."""
    started = time.monotonic()
    fspec.validate(n_sites=sum(1 for s in sites if s.role == "train"))
    if fspec.evaluation.central:
        raise SimulationError(NO_CENTRAL_SET, "spec.evaluation.central")
    ordered = sorted(sites, key=lambda s: s.site_id)
    if len({s.site_id for s in ordered}) != len(ordered):
        raise SimulationError("Site ids must be distinct.", "sites")
    trainers = [s for s in ordered if s.role == "train"]
    if len(trainers) < max(1, fspec.min_participants):
        raise SimulationError(
            f"{len(trainers)} training sites; the spec needs min_participants={fspec.min_participants}.", "sites"
        )
    # The hosted path's schema check (model input kind, image data, no feature column), on the one schema.
    for problems in compare_schemas({"dataset": site_schema_summary(schema, fspec.train)}).values():
        raise SimulationError(" ".join(problems), "dataset")
    # Round 0: statistics of the training sites, merged in site order (as advance does).
    try:
        stats = [site_statistics(s.table, schema, fspec.train) for s in trainers]
        encoders = merge_round_0(stats, fspec.train)
    except DataError as exc:  # e.g. text whose sites share no word often enough
        raise SimulationError(f"round 0: {exc}", "dataset") from exc
    state = initial_state(fspec, encoders)
    prepared: dict[int, Prepared] = {}
    for s in ordered:
        try:
            prepared[s.site_id] = prepare_with_encoders(s.table, schema, fspec.train, encoders)
        except DataError as exc:
            raise SimulationError(f"{s.label}: {exc}", "sites") from exc
    initial = {k: v.clone() for k, v in state.items()}
    strategy = make_strategy(fspec.strategy.name, fspec.strategy.params)
    last_selected: dict[int, int | None] = {s.site_id: None for s in trainers}
    dp_history: dict[int, list[tuple[float, float, int]]] = {s.site_id: [] for s in trainers}
    nonces: set[str] = set()
    central_rounds: dict[str, int] = {}
    history: list[dict[str, Any]] = []
    evaluators = [s for s in ordered if s.role == "evaluate"]
    status = "completed"
    for number in range(1, fspec.rounds + 1):
        if should_stop is not None and should_stop():
            status = "stopped"
            break
        t0 = time.monotonic()
        chosen = select_sites(
            [s.site_id for s in trainers],
            round_number=number,
            per_round=fspec.participants_per_round(len(trainers)),
            seed=fspec.seed,
            last_selected=last_selected,
        )
        for sid in chosen:
            last_selected[sid] = number
        selected = sorted(chosen) + [s.site_id for s in evaluators]
        by_id = {s.site_id: s for s in ordered}
        evals: list[tuple[dict[str, float], int]] = []  # the training sites' (the round's metrics)
        eval_only: list[tuple[dict[str, float], int]] = []  # reported apart, as at the end
        updates: list[tuple[dict[str, torch.Tensor], int]] = []
        site_rows: list[dict[str, Any]] = []
        for sid in sorted(selected):
            site, prep = by_id[sid], prepared[sid]
            ev = evaluate_state(fspec, prep, state)
            (evals if site.role == "train" else eval_only).append((ev, len(prep.y_val)))
            if site.role != "train":
                continue
            rows = site.n_rows if site.n_rows is not None else site.table.num_rows
            upd = local_update(fspec, prep, state, seed=site_seed(secret, federation_id, sid, number),
                               dp_rows=rows if fspec.dp.mode == "local" else None,
                               dp_history=dp_history[sid])  # fmt: skip
            nonce = f"sim:{number}:{sid}"
            row: dict[str, Any] = {"site": site.label, "n_examples": int(upd.n_train),
                                   "loss": upd.metrics.get("loss"), "epsilon": upd.epsilon}  # fmt: skip
            size = sum(t.numel() * t.element_size() for t in upd.delta.values())
            try:
                validate_update(
                    upd.delta, state, round_id=number, expected_round_id=number, nonce=nonce, seen_nonces=nonces,
                    site_id=sid, selected_sites=selected, l2_bound=fspec.update_bound,
                    max_bytes=MAX_UPDATE_BYTES, payload_bytes=size,
                )  # fmt: skip
            except UpdateRejected as exc:
                row.update(state="rejected", reason=exc.code)
                site_rows.append(row)
                continue
            nonces.add(nonce)
            if upd.privacy_history:
                sigma, q, _n = upd.privacy_history[-1]
                dp_history[sid] = compose(dp_history[sid], float(sigma), float(q), int(upd.dp_steps))
            row.update(state="submitted", update_norm=float(update_l2_norm(upd.delta)))
            site_rows.append(row)
            updates.append((upd.delta, int(upd.n_train)))
        quorum = min(fspec.quorum or len(chosen), len(chosen))
        if len(updates) < max(1, quorum):
            raise SimulationError(f"round {number}: {len(updates)} valid updates, quorum {quorum}.", "spec")
        noise_seed = central_seed(secret, federation_id, number)
        state = aggregate_round(fspec, strategy, state, updates, central_noise_seed=noise_seed, selected=len(chosen))
        if fspec.dp.mode == "central":  # each participant's site-level ε, composed over its rounds
            for row in site_rows:
                if row["state"] == "submitted":
                    central_rounds[row["site"]] = central_rounds.get(row["site"], 0) + 1
                    row["epsilon"] = central_epsilon(fspec, central_rounds[row["site"]])
        eps = [r["epsilon"] for r in site_rows if r.get("epsilon") is not None]
        record = {
            "round": number,
            "participants": [r["site"] for r in site_rows if r["state"] == "submitted"],
            "metrics": _weighted(evals),
            **({"evaluation_only": _weighted(eval_only)} if eval_only else {}),
            "sites": site_rows,
            "epsilon": max(eps) if eps else None,
            "seconds": round(time.monotonic() - t0, 3),
            "model_digest": state_digest(state),
        }
        history.append(record)
        if on_round is not None:
            on_round(record)
    # The final evaluation: every site, training and evaluation-only, on its validation split.
    per_site = {s.label: evaluate_state(fspec, prepared[s.site_id], state) for s in trainers}
    final = _weighted([(per_site[s.label], len(prepared[s.site_id].y_val)) for s in trainers])
    ev_only = {s.label: evaluate_state(fspec, prepared[s.site_id], state) for s in evaluators}
    local_only: dict[str, dict[str, float]] = {}
    if (local_baseline or fspec.evaluation.local_baseline) and status == "completed":
        for s in trainers:
            rows = s.n_rows if s.n_rows is not None else s.table.num_rows
            local_only[s.label] = local_only_metrics(
                fspec, prepared[s.site_id], initial, secret, federation_id, s.site_id, rows
            )
    return SimulationResult(
        state=state,
        encoders=encoders,
        final_metrics=final,
        per_site=per_site,
        evaluation_only={
            "metrics": _weighted([(ev_only[s.label], len(prepared[s.site_id].y_val)) for s in evaluators]),
            "per_site": ev_only,
        },
        rounds=history,
        local_only=local_only,
        sites=[
            {
                "site": s.label,
                "role": s.role,
                "rows": s.table.num_rows,
                "n_train": len(prepared[s.site_id].y_train),
                "n_val": len(prepared[s.site_id].y_val),
            }
            for s in ordered
        ],
        model_digest=state_digest(state),
        seconds=time.monotonic() - started,
        status=status,
    )


def _weighted(pairs: Sequence[tuple[dict[str, float], int]]) -> dict[str, float]:
    """As the platform weights metrics (``apps.federation.services.rounds.weighted_metrics``)."""
    return weighted_global({i: (m, n) for i, (m, n) in enumerate(pairs) if m and n})


# --- the command line ------------------------------------------------------------------------------


def _read_csv(path: str, label: str) -> tuple[pa.Table, DatasetSchema]:
    from workers.ingest import IngestError, TableSource, convert, detect_format, scan

    try:
        fmt = detect_format(path, Path(path).name)
        source = TableSource.open(path, fmt)
        scanned = scan(source, label=label)
        batches = list(convert(source, scanned.schema))
    except IngestError as exc:
        raise SimulationError(f"{path}: {exc}", "csv") from exc
    table = pa.Table.from_batches(batches, schema=scanned.schema.arrow_schema())
    return table, scanned.schema


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.federated.simulate",
        description="Run a federation spec over seeded virtual sites cut from one CSV (or Parquet) file.",
    )
    parser.add_argument("--data", required=True, help="CSV, JSON Lines or Parquet file with a label column")
    parser.add_argument("--label", required=True, help="the label column")
    parser.add_argument("--spec", required=True, help="FederationSpec JSON file (as POST .../federations/ takes)")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--partition", choices=PARTITIONS, default="iid")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (partition=dirichlet)")
    parser.add_argument("--seed", type=int, default=0, help="the split's seed")
    parser.add_argument("--evaluation-sites", type=int, default=0, help="of --sites, how many only evaluate")
    parser.add_argument("--local-baseline", action="store_true", help="also train each site alone and compare")
    parser.add_argument("--out", help="write the result JSON here (default: standard output)")
    parser.add_argument("--weights", help="write the final global model here (safetensors)")
    args = parser.parse_args(argv)
    try:
        raw = json.loads(Path(args.spec).read_text())
        fspec = FederationSpec.from_dict(raw)
        split = SplitSpec(sites=args.sites, partition=args.partition, alpha=args.alpha, seed=args.seed,
                          evaluation_sites=args.evaluation_sites)  # fmt: skip
        split.validate()
        table, schema = _read_csv(args.data, args.label)
        sites = split_sites(table, schema, split)
        result = run(
            fspec,
            sites,
            schema,
            secret=simulation_secret(fspec, split),
            local_baseline=args.local_baseline,
            on_round=lambda r: print(
                f"round {r['round']}: {json.dumps(r['metrics'])} ({r['seconds']} s)", file=sys.stderr
            ),
        )
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for k, v in exc.fields.items():
            print(f"  spec.{k}: {'; '.join(v)}", file=sys.stderr)
        return 2
    except SimulationError as exc:
        print(f"error: {exc.field + ': ' if exc.field else ''}{exc}", file=sys.stderr)
        return 2
    out = {"spec_hash": fspec.spec_hash(), "split": split.to_dict(), **result.to_dict(),
           "input_info": model_input_info(result.encoders)}  # fmt: skip
    text = json.dumps(finite_json(out), indent=2, allow_nan=False)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    if args.weights:
        from workers.training.weights import save_weights

        with open(args.weights, "wb") as f:
            save_weights(result.state, f, {"spec_hash": fspec.spec_hash(), "simulation": json.dumps(split.to_dict())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
