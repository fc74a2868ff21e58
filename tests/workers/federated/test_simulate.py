"""Simulation mode (``workers.federated.simulate``): seeded virtual sites, the hosted round logic in
one process, the local-only comparison, and the command line. Its ``torch.equal`` parity with a
hosted run on real workers is in ``tests/e2e/test_federation_workers.py``."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from tests.workers.federated.test_rounds import SCHEMA
from tests.workers.federated.test_rounds import TRAIN as ROUNDS_TRAIN
from workers.federated.rounds import aggregate_round, initial_state, local_update, site_seed
from workers.federated.simulate import (
    SimulationError,
    SplitSpec,
    finite_json,
    run,
    simulation_secret,
    split_sites,
    state_digest,
)
from workers.federated.spec import FederationSpec
from workers.federated.stats import merge_statistics, site_statistics
from workers.federated.strategies import make_strategy
from workers.schema import Column, DatasetSchema
from workers.training.data import prepare_with_encoders
from workers.training.spec import SpecError

ROOT = Path(__file__).resolve().parents[3]
# The 30-feature breast-cancer schema of the round tests; a smaller, one-epoch model.
TRAIN = {**ROUNDS_TRAIN, "model": {"name": "mlp", "params": {"hidden": [16]}}, "epochs": 1}


def _table() -> pa.Table:
    d = load_breast_cancer()
    cols: dict[str, object] = {f"f{i}": d.data[:, i] for i in range(30)}
    cols["y"] = ["b" if t else "m" for t in d.target]
    return pa.table(cols)


def _fspec(**over: object) -> FederationSpec:
    return FederationSpec.from_dict({"train": TRAIN, "rounds": 3, **over})


def test_iid_split_is_a_seeded_partition_of_the_labelled_rows() -> None:
    table = _table()
    sites = split_sites(table, SCHEMA, SplitSpec(sites=4, seed=7))
    assert [s.label for s in sites] == ["site-1", "site-2", "site-3", "site-4"]
    sizes = [s.table.num_rows for s in sites]
    assert sum(sizes) == table.num_rows and max(sizes) - min(sizes) <= 1
    rows = Counter(tuple(r.values()) for s in sites for r in s.table.to_pylist())
    assert rows == Counter(tuple(r.values()) for r in table.to_pylist())  # disjoint, nothing lost
    again = split_sites(table, SCHEMA, SplitSpec(sites=4, seed=7))
    assert all(a.table.equals(b.table) for a, b in zip(sites, again, strict=True))
    other = split_sites(table, SCHEMA, SplitSpec(sites=4, seed=8))
    assert not all(a.table.equals(b.table) for a, b in zip(sites, other, strict=True))


def test_dirichlet_split_skews_labels_more_as_alpha_shrinks() -> None:
    table = _table()

    def skew(alpha: float) -> float:  # mean |share of class "m" at a site - overall share|
        sites = split_sites(table, SCHEMA, SplitSpec(sites=5, partition="dirichlet", alpha=alpha, seed=1))
        assert sum(s.table.num_rows for s in sites) == table.num_rows
        assert min(s.table.num_rows for s in sites) >= 10
        overall = table.column("y").to_pylist().count("m") / table.num_rows
        return float(np.mean([abs(s.table.column("y").to_pylist().count("m") / s.table.num_rows - overall)
                              for s in sites]))  # fmt: skip

    assert skew(0.1) > skew(100.0) + 0.1
    assert skew(100.0) < 0.08


def test_bad_splits_are_refused_by_field() -> None:
    table = _table()
    cases = [
        (SplitSpec(sites=1), "sites"),
        (SplitSpec(sites=101), "sites"),
        (SplitSpec(partition="shards"), "partition"),
        (SplitSpec(alpha=0), "alpha"),
        (SplitSpec(sites=3, evaluation_sites=2), "evaluation_sites"),
        (SplitSpec(sites=60), "sites"),  # 569 rows cannot make 60 sites of 10
        (SplitSpec(sites=50, partition="dirichlet", alpha=0.001), "alpha"),
    ]
    for split, field in cases:
        with pytest.raises(SimulationError) as exc:
            split_sites(table, SCHEMA, split)
        assert exc.value.field == field, (split, exc.value)
    with pytest.raises(SimulationError) as unknown:
        SplitSpec.from_dict({"sites": 3, "shards": 2})
    assert unknown.value.field == "shards"
    reg = DatasetSchema([Column("x", "float"), Column("t", "float", "label")], label="t", task="regression")
    rtable = pa.table({"x": np.arange(100.0), "t": np.arange(100.0)})
    with pytest.raises(SimulationError, match="classification"):
        split_sites(rtable, reg, SplitSpec(partition="dirichlet"))


def test_simulation_is_the_hosted_round_logic_step_for_step() -> None:
    """The same sites, secret and ids through the pure functions in the order ``advance`` uses give
    bit-identical weights (what makes the hosted-run parity hold)."""
    fspec = _fspec(strategy={"name": "fedadam", "params": {"eta": 0.05}})
    sites = split_sites(_table(), SCHEMA, SplitSpec(sites=3, partition="dirichlet", alpha=0.5, seed=2))
    secret = b"k" * 32
    result = run(fspec, sites, SCHEMA, secret=secret, federation_id=9)

    stats = [site_statistics(s.table, SCHEMA, fspec.train) for s in sites]
    enc = merge_statistics(stats, min_rows=5, min_sites=2, max_categories=fspec.train.data.max_categories)
    preps = [prepare_with_encoders(s.table, SCHEMA, fspec.train, enc) for s in sites]
    state = initial_state(fspec, enc)
    strategy = make_strategy("fedadam", {"eta": 0.05})
    for r in range(1, 4):
        ups = [local_update(fspec, p, state, seed=site_seed(secret, 9, s.site_id, r)) for s, p in zip(sites, preps, strict=True)]  # fmt: skip
        state = aggregate_round(fspec, strategy, state, [(u.delta, u.n_train) for u in ups])
    assert result.state.keys() == state.keys()
    assert all(torch.equal(result.state[k], state[k]) for k in state)
    assert result.model_digest == state_digest(state) == result.rounds[-1]["model_digest"]
    assert [r["participants"] for r in result.rounds] == [["site-1", "site-2", "site-3"]] * 3
    assert result.encoders == enc
    # Reproducible, and a different secret (another federation) trains differently.
    again = run(fspec, sites, SCHEMA, secret=secret, federation_id=9)
    assert again.model_digest == result.model_digest
    assert run(fspec, sites, SCHEMA, secret=b"j" * 32, federation_id=9).model_digest != result.model_digest


def test_fraction_selection_evaluation_sites_and_rounds_report() -> None:
    fspec = _fspec(select="fraction", fraction=0.5, min_participants=2, rounds=4)
    sites = split_sites(_table(), SCHEMA, SplitSpec(sites=5, seed=0, evaluation_sites=1))
    seen: list[int] = []
    result = run(fspec, sites, SCHEMA, secret=b"s" * 32, on_round=lambda r: seen.append(r["round"]))
    assert seen == [1, 2, 3, 4]
    assert all(len(r["participants"]) == 2 for r in result.rounds)
    counts = Counter(p for r in result.rounds for p in r["participants"])
    assert set(counts) == {"site-1", "site-2", "site-3", "site-4"} and max(counts.values()) == 2  # fair rotation
    assert "site-5" not in counts and set(result.evaluation_only["per_site"]) == {"site-5"}
    assert set(result.per_site) == {"site-1", "site-2", "site-3", "site-4"}
    assert result.final_metrics["accuracy"] > 0.85
    for r in result.rounds:
        assert {s["state"] for s in r["sites"]} == {"submitted"}
        assert all(s["n_examples"] > 0 and s["update_norm"] > 0 for s in r["sites"])
        # The round's metrics are the selected training sites'; the evaluation-only site's apart.
        assert set(r["evaluation_only"]) == set(r["metrics"]) and r["evaluation_only"] != r["metrics"]


def test_local_only_comparison_shows_what_one_class_sites_cannot_learn() -> None:
    """Sorted by label and cut in three: the one-class sites' local-only models score on their own
    one-class validation split trivially, so the comparison is also made on the pooled test of the
    others' rows: there the federated model must beat every local-only one."""
    table = _table()
    order = np.argsort(np.asarray(table.column("y").to_pylist()) == "b", kind="stable")
    parts = np.array_split(order, 3)
    from workers.federated.simulate import VirtualSite

    sites = [VirtualSite(i + 1, f"site-{i + 1}", table.take(pa.array(np.sort(p)))) for i, p in enumerate(parts)]
    fspec = _fspec(rounds=5)
    result = run(fspec, sites, SCHEMA, secret=b"s" * 32, local_baseline=True)
    assert set(result.local_only) == {"site-1", "site-2", "site-3"}
    assert all("accuracy" in m for m in result.local_only.values())
    # The mixed middle site's own validation split has both classes: global >= local-only - 5 pp.
    assert result.per_site["site-2"]["accuracy"] >= result.local_only["site-2"]["accuracy"] - 0.05
    assert result.final_metrics["accuracy"] > 0.85


def test_dp_simulation_composes_epsilon_like_the_hosted_run() -> None:
    fspec = _fspec(local_steps=4, train={**TRAIN, "epochs": 1},
                   dp={"mode": "local", "noise_multiplier": 1.1, "delta": 1e-5})  # fmt: skip
    sites = split_sites(_table(), SCHEMA, SplitSpec(sites=3, seed=0))
    result = run(fspec, sites, SCHEMA, secret=b"s" * 32)
    eps = [[s["epsilon"] for s in r["sites"]] for r in result.rounds]
    assert all(e is not None and e > 0 for row in eps for e in row)
    assert all(a < b for r1, r2 in itertools.pairwise(eps) for a, b in zip(r1, r2, strict=True))


def test_spec_errors_surface_before_any_training() -> None:
    sites = split_sites(_table(), SCHEMA, SplitSpec(sites=3))
    with pytest.raises(SpecError) as exc:
        run(_fspec(strategy={"name": "krum", "params": {"f": 1}}), sites, SCHEMA, secret=b"s" * 32)
    assert "strategy" in " ".join(exc.value.fields)


def test_finite_json_turns_nan_into_null() -> None:
    assert json.dumps(finite_json({"a": [float("nan"), 1.0], "b": float("inf")}), allow_nan=False) == (
        '{"a": [null, 1.0], "b": null}'
    )


def test_command_line_runs_from_a_csv_and_exits_2_on_bad_input(tmp_path: Path) -> None:
    d = load_breast_cancer(as_frame=True).frame
    csv = tmp_path / "bc.csv"
    d.to_csv(csv, index=False)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"train": TRAIN, "rounds": 2}))
    out, weights = tmp_path / "out.json", tmp_path / "model.safetensors"
    cmd = [sys.executable, "-m", "workers.federated.simulate", "--data", str(csv), "--label", "target",
           "--spec", str(spec), "--sites", "3", "--partition", "dirichlet", "--alpha", "1.0",
           "--local-baseline", "--out", str(out), "--weights", str(weights)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["status"] == "completed" and len(report["rounds"]) == 2
    assert set(report["local_only"]) == {"site-1", "site-2", "site-3"}
    assert report["split"] == {"sites": 3, "partition": "dirichlet", "alpha": 1.0, "seed": 0, "evaluation_sites": 0}
    assert report["final_metrics"]["accuracy"] > 0.8
    from workers.training.weights import load_weights

    tensors, _ = load_weights(weights.read_bytes())
    assert state_digest(tensors) == report["model_digest"]
    # Reproducible from the command line too: the secret comes from the spec and the split.
    fs = FederationSpec.from_dict({"train": TRAIN, "rounds": 2})
    assert simulation_secret(fs, SplitSpec(3, "dirichlet", 1.0, 0)) == simulation_secret(
        fs, SplitSpec(3, "dirichlet", 1.0, 0)
    )

    bad_spec = tmp_path / "bad.json"
    bad_spec.write_text(json.dumps({"train": TRAIN, "rounds": 0}))
    central_spec = tmp_path / "central.json"  # a simulation has no central set: hold out virtual sites
    central_spec.write_text(json.dumps({"train": TRAIN, "rounds": 2, "evaluation": {"central": True}}))
    for args, needle in [
        (["--spec", str(bad_spec)], "spec.rounds"),
        (["--spec", str(central_spec)], "evaluation.central"),
        (["--sites", "1"], "sites"),
        (["--label", "nope"], "label"),
    ]:
        argv = list(cmd[:-4])
        for flag, value in zip(args[::2], args[1::2], strict=True):
            argv[argv.index(flag) + 1] = value
        bad = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2, (args, bad.stderr)
        assert needle in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
