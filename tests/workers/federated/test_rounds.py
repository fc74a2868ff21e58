"""Round 0's merged encoders, site selection and seeds, local updates, and a whole federation run
with the pure functions (no platform): label-skewed hospitals against centralized training."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from workers.federated.rounds import (
    aggregate_round,
    evaluate_state,
    initial_state,
    local_update,
    select_sites,
    site_seed,
    weighted_global,
)
from workers.federated.spec import FederationSpec
from workers.federated.stats import (
    compare_schemas,
    merge_round_0,
    merge_statistics,
    site_schema_summary,
    site_statistics,
)
from workers.federated.strategies import make_strategy
from workers.federated.validate import update_l2_norm
from workers.schema import Column, DatasetSchema
from workers.training.data import DataError, fit_tabular, prepare_tabular, prepare_with_encoders, site_split
from workers.training.engine import NullSink, evaluate, train
from workers.training.models import build

SCHEMA = DatasetSchema(
    [Column(f"f{i}", "float") for i in range(30)] + [Column("y", "category", "label")],
    label="y",
    task="binary_classification",
)
TRAIN = {
    "model": {"name": "mlp", "params": {"hidden": [32]}},
    "optimizer": {"name": "adamw", "lr": 0.01},
    "epochs": 2,
    "batch_size": 32,
    "seed": 3,
}


def _fspec(**over: object) -> FederationSpec:
    return FederationSpec.from_dict({"train": TRAIN, "rounds": 3, **over})


def _hospitals() -> list[pa.Table]:
    """Breast cancer sorted by label and cut in three: one all-malignant site, one mixed, one benign."""
    d = load_breast_cancer()
    cols: dict[str, object] = {f"f{i}": d.data[:, i] for i in range(30)}
    cols["y"] = ["b" if t else "m" for t in d.target]
    table = pa.table(cols)
    order = np.argsort(d.target, kind="stable")
    return [table.take(pa.array(p)) for p in np.array_split(order, 3)]


def _train_rows(table: pa.Table, fspec: FederationSpec) -> pa.Table:
    idx, _ = site_split(table.column("y").to_pylist(), "classification", fspec.train)
    return table.take(pa.array(idx))


def test_merged_encoders_equal_encoders_fitted_on_the_pooled_training_rows() -> None:
    rng = np.random.default_rng(0)
    schema = DatasetSchema(
        [Column("age", "integer"), Column("ward", "category"), Column("y", "category", "label")],
        label="y",
        task="binary_classification",
    )
    fspec = _fspec()
    sites = []
    for s in range(3):
        n = 200
        ward = rng.choice(["a", "b", "c"], n).tolist()
        ward[0] = f"rare-{s}"  # a value only one site holds: it must not enter the vocabulary
        age = rng.integers(20, 90, n).astype(float)
        age[:5] = np.nan
        sites.append(pa.table({"age": pa.array(age, mask=np.isnan(age)).cast(pa.int64()), "ward": ward,
                               "y": rng.choice(["yes", "no"], n).tolist()}))  # fmt: skip
    stats = [site_statistics(t, schema, fspec.train) for t in sites]
    assert all("rows" not in s and s["n_rows"] < 200 for s in stats)  # aggregates of the train split only
    merged = merge_statistics(stats, min_rows=5, min_sites=2, max_categories=10)
    pooled = pa.concat_tables([_train_rows(t, fspec) for t in sites])
    ref = fit_tabular(pooled, schema, np.arange(pooled.num_rows), 10)
    age, ref_age = merged["columns"][0], ref["columns"][0]
    assert age["mean"] == pytest.approx(ref_age["mean"], rel=1e-12)
    assert age["std"] == pytest.approx(ref_age["std"], rel=1e-9)
    assert age["missing"] is True
    assert merged["columns"][1]["values"] == ["a", "b", "c"] or sorted(merged["columns"][1]["values"]) == [
        "a",
        "b",
        "c",
    ]
    assert not any(v.startswith("rare") for v in merged["columns"][1]["values"])
    assert any(v.startswith("rare") for v in ref["columns"][1]["values"])  # pooled fitting would leak it
    assert merged["label"] == {"kind": "classes", "classes": ["no", "yes"]}
    # merge_round_0 is this rule; its 2 sites hold even when one site alone reported round 0.
    assert merge_round_0(stats, fspec.train) == merged
    alone = merge_round_0(stats[:1], fspec.train)
    assert alone["columns"][1]["values"] == [] and alone["columns"][0]["mean"] == pytest.approx(
        float(np.nanmean(_train_rows(sites[0], fspec).column("age").to_numpy(zero_copy_only=False)))
    )


def test_schema_differences_are_named_per_site() -> None:
    fspec = _fspec()
    same = site_schema_summary(SCHEMA, fspec.train)
    other = DatasetSchema(
        [Column(f"f{i}", "float") for i in range(29)] + [Column("f29", "integer"), Column("extra", "float"),
                                                          Column("y", "category", "label")],
        label="y",
        task="binary_classification",
    )  # fmt: skip
    assert compare_schemas({"a": same, "b": same}) == {}
    diffs = compare_schemas({"a": same, "b": site_schema_summary(other, fspec.train)})
    assert set(diffs) == {"b"}
    text = " ".join(diffs["b"])
    assert "extra" in text and "'f29' is integer" in text


def test_a_single_class_site_gets_the_federations_output_layer() -> None:
    fspec = _fspec()
    sites = _hospitals()
    stats = [site_statistics(t, SCHEMA, fspec.train) for t in sites]
    enc = merge_statistics(stats, min_rows=5, min_sites=2, max_categories=50)
    with pytest.raises(DataError):
        prepare_tabular(sites[0], SCHEMA, fspec.train)  # alone, one class cannot train
    prepared = prepare_with_encoders(sites[0], SCHEMA, fspec.train, enc)
    assert prepared.n_outputs == 2 and prepared.classes == ["b", "m"]
    assert set(prepared.y_train.tolist()) == {1}
    bad = {**enc, "label": {"kind": "classes", "classes": ["b", "x"]}}
    with pytest.raises(DataError, match="not among the federation's classes"):
        prepare_with_encoders(sites[0], SCHEMA, fspec.train, bad)


def test_seeds_are_secret_stable_and_distinct() -> None:
    a = site_seed(b"k" * 32, 1, 2, 3)
    assert a == site_seed(b"k" * 32, 1, 2, 3)
    others = {site_seed(b"k" * 32, 1, 2, 4), site_seed(b"k" * 32, 1, 3, 3), site_seed(b"j" * 32, 1, 2, 3)}
    assert a not in others and len(others) == 3
    assert all(0 <= s < 2**31 for s in (a, *others))


def test_selection_is_deterministic_and_fair() -> None:
    ids = list(range(10, 20))
    last: dict[int, int | None] = {i: None for i in ids}
    counts = dict.fromkeys(ids, 0)
    for r in range(1, 11):
        chosen = select_sites(ids, round_number=r, per_round=3, seed=7, last_selected=last)
        assert chosen == select_sites(ids, round_number=r, per_round=3, seed=7, last_selected=dict(last))
        assert len(chosen) == 3 and chosen == sorted(chosen)
        for i in chosen:
            counts[i] += 1
            last[i] = r
    assert max(counts.values()) - min(counts.values()) <= 1, counts  # 30 slots over 10 sites: 3 each
    assert select_sites(ids, round_number=1, per_round=99, seed=0) == ids


def _prepared(fspec: FederationSpec) -> tuple[list[object], dict[str, object]]:
    sites = _hospitals()
    enc = merge_statistics([site_statistics(t, SCHEMA, fspec.train) for t in sites], min_rows=5, min_sites=2,
                           max_categories=50)  # fmt: skip
    return [prepare_with_encoders(t, SCHEMA, fspec.train, enc) for t in sites], enc


def test_local_update_is_reproducible_clipped_and_step_exact() -> None:
    fspec = _fspec(local_steps=7, update_bound=0.05)
    preps, enc = _prepared(fspec)
    base = initial_state(fspec, enc)
    u1 = local_update(fspec, preps[1], base, seed=11)
    u2 = local_update(fspec, preps[1], base, seed=11)
    u3 = local_update(fspec, preps[1], base, seed=12)
    assert all(torch.equal(u1.delta[k], u2.delta[k]) for k in base)  # a retried task sends the same bits
    assert not all(torch.equal(u1.delta[k], u3.delta[k]) for k in base)
    assert u1.steps == 7 and u1.n_train == len(preps[1].x_train)  # type: ignore[attr-defined]
    assert u1.clipped and update_l2_norm(u1.delta) <= 0.05 * (1 + 1e-6) < u1.norm_before_clip
    assert set(u1.delta) == set(base) and all(u1.delta[k].dtype == base[k].dtype for k in base)


def test_fedprox_pulls_the_local_model_towards_the_global_one() -> None:
    plain = _fspec(local_steps=30, strategy={"name": "fedavg"})
    prox = _fspec(local_steps=30, strategy={"name": "fedprox", "params": {"mu": 5.0}})
    preps, enc = _prepared(plain)
    base = initial_state(plain, enc)
    far = update_l2_norm(local_update(plain, preps[1], base, seed=1).delta)
    near = update_l2_norm(local_update(prox, preps[1], base, seed=1).delta)
    assert near < 0.9 * far, (near, far)


def test_federation_on_label_skewed_sites_approaches_centralized_training() -> None:
    """Three hospitals, one holding only malignant cases and one only benign: no site can learn the
    task alone; FedAvg over them must come close to training on the pooled data."""
    fspec = _fspec(rounds=8)
    preps, enc = _prepared(fspec)
    state = initial_state(fspec, enc)
    strategy = make_strategy("fedavg", {})
    for r in range(1, fspec.rounds + 1):
        ups = [local_update(fspec, p, state, seed=site_seed(b"s" * 32, 1, i, r)) for i, p in enumerate(preps)]
        state = aggregate_round(fspec, strategy, state, [(u.delta, u.n_train) for u in ups])
    fed = weighted_global({i: (evaluate_state(fspec, p, state), len(p.y_val)) for i, p in enumerate(preps)})

    # Centralized: the same model and epochs x rounds on the pooled rows, scored on the same val rows.
    pooled = preps[0]
    x_tr = torch.cat([p.x_train for p in preps])  # type: ignore[attr-defined]
    y_tr = torch.cat([p.y_train for p in preps])  # type: ignore[attr-defined]
    x_va = torch.cat([p.x_val for p in preps])  # type: ignore[attr-defined]
    y_va = torch.cat([p.y_val for p in preps])  # type: ignore[attr-defined]
    import dataclasses

    union = dataclasses.replace(pooled, x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va)  # type: ignore[type-var]
    central = train(
        dataclasses.replace(fspec.train, epochs=fspec.rounds * fspec.train.epochs), union, NullSink()
    ).final_metrics
    single = []
    for p in preps:
        own = dataclasses.replace(p, x_val=x_va, y_val=y_va)  # type: ignore[type-var]
        res = train(dataclasses.replace(fspec.train, epochs=fspec.rounds * fspec.train.epochs), own, NullSink())
        model = build(fspec.train.model.name, fspec.train.model.params, union.input_info)  # type: ignore[attr-defined]
        model.load_state_dict(res.model_state)
        single.append(evaluate(model, union, ("accuracy",), torch.device("cpu"))["accuracy"])  # type: ignore[arg-type]
    assert fed["accuracy"] >= central["val_accuracy"] - 0.05, (fed, central)
    assert fed["accuracy"] >= max(single) - 0.02, (fed["accuracy"], single)
    assert single[0] < 0.7 and single[2] < 0.7, single  # the one-class sites cannot learn the task alone


def test_local_dp_rounds_compose_to_the_projection_and_retries_are_bit_for_bit() -> None:
    """Local DP (FL-4 at the round level): each site's ε after its last round equals the
    projection its ledger reserved at start (recomputed here with Opacus' accountant from the
    logged sigma, q and steps), a retried round reproduces its noised update, and the model learns."""
    from opacus.accountants import RDPAccountant

    from workers.federated.spec import dp_noise_multiplier, dp_sample_rate, projected_epsilon

    fspec = _fspec(train={**TRAIN, "epochs": 1}, rounds=3, local_steps=10, dp={"mode": "local", "target_epsilon": 3.0, "delta": 1e-5,
                                                   "max_grad_norm": 1.0})  # fmt: skip
    fspec.validate(n_sites=3)
    preps, enc = _prepared(fspec)
    state = initial_state(fspec, enc)
    strategy = make_strategy("fedavg", {})
    rows = [len(p.x_train) + len(p.x_val) for p in preps]  # type: ignore[attr-defined]
    histories: list[list[tuple[float, float, int]]] = [[] for _ in preps]
    eps: list[float] = [0.0] * 3
    for r in range(1, fspec.rounds + 1):
        ups = []
        for i, p in enumerate(preps):
            u = local_update(fspec, p, state, seed=site_seed(b"s" * 32, 1, i, r), dp_rows=rows[i],
                             dp_history=histories[i])  # fmt: skip
            if r == 2 and i == 0:  # a retry of the same slot: the same noised delta, the same ε
                again = local_update(fspec, p, state, seed=site_seed(b"s" * 32, 1, i, r), dp_rows=rows[i],
                                     dp_history=histories[i])  # fmt: skip
                assert all(torch.equal(u.delta[k], again.delta[k]) for k in state) and again.epsilon == u.epsilon
            assert u.dp_steps == 10 and u.epsilon is not None and u.epsilon > eps[i]
            assert u.metrics == {}  # no training loss leaves a DP site: it is not covered by ε
            histories[i], eps[i] = u.privacy_history, u.epsilon
            ups.append(u)
        state = aggregate_round(fspec, strategy, state, [(u.delta, u.n_train) for u in ups])
    for i in range(3):
        sigma, q = dp_noise_multiplier(fspec, rows[i]), dp_sample_rate(fspec, rows[i])
        acc = RDPAccountant()
        for _ in range(fspec.rounds * 10):
            acc.step(noise_multiplier=sigma, sample_rate=q)
        recomputed = acc.get_epsilon(delta=1e-5)
        assert abs(eps[i] - recomputed) / recomputed < 0.01, (eps[i], recomputed)
        assert eps[i] == pytest.approx(projected_epsilon(fspec, n_rows=rows[i]), rel=1e-9)
        assert eps[i] <= 3.0
    fed = weighted_global({i: (evaluate_state(fspec, p, state), len(p.y_val)) for i, p in enumerate(preps)})
    assert fed["accuracy"] > 0.7, fed
