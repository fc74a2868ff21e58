"""Text federations at the workers level: round 0's word statistics and merged vocabulary, every
site's encoding with it (or with a model's own tokenizer), the schema checks, and a label-skewed
three-site simulation of clinical notes against the majority class. No Django, no database."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from typing import Any

import pyarrow as pa
import pytest
import torch

from workers.federated.rounds import initial_state, model_input_info
from workers.federated.simulate import SimulationError, VirtualSite, run, state_digest
from workers.federated.spec import FederationSpec
from workers.federated.stats import (
    MAX_REPORTED_TOKENS,
    TEXT_SITE_MIN_ROWS,
    compare_schemas,
    merge_round_0,
    merge_statistics,
    site_schema_summary,
    site_statistics,
)
from workers.schema import Column, DatasetSchema
from workers.training.data import (
    OOV_ID,
    DataError,
    encode_text,
    prepare_text,
    prepare_with_encoders,
    site_split,
    tokenize,
)
from workers.training.inference import load_model, predict
from workers.training.models import minilm
from workers.training.spec import TrainSpec
from workers.training.weights import save_weights

SCHEMA = DatasetSchema(
    [Column("note", "text"), Column("sex", "category"), Column("department", "category", "label")],
    label="department",
    task="text_classification",
)
TABULAR = DatasetSchema(
    [Column("age", "float"), Column("department", "category", "label")],
    label="department",
    task="multiclass_classification",
)
# Each department's own words; a note draws two of them among shared filler, so no single word
# decides the class and a site that rarely sees a department still learns it from the others.
WORDS = {
    "cardiology": ["chest", "palpitations", "ecg", "murmur", "angina", "troponin"],
    "oncology": ["tumour", "chemotherapy", "biopsy", "metastasis", "lymphoma", "radiotherapy"],
    "respiratory": ["cough", "wheeze", "spirometry", "asthma", "sputum", "inhaler"],
    "orthopaedics": ["fracture", "knee", "hip", "cast", "ligament", "xray"],
}
FILLER = ["patient", "seen", "reviewed", "today", "stable", "plan", "discharged", "home", "follow", "up", "weeks"]
# Share of each site's notes per department (label skew): every department is rare somewhere.
SKEW = ((0.55, 0.25, 0.1, 0.1), (0.1, 0.55, 0.25, 0.1), (0.1, 0.1, 0.25, 0.55))
TRAIN: dict[str, Any] = {
    "model": {"name": "text_bag", "params": {"dim": 16}},
    "optimizer": {"name": "adam", "lr": 0.05},
    "epochs": 2,
    "batch_size": 16,
    "seed": 4,
    "data": {"text_max_len": 24},
}


def _notes(n: int, shares: tuple[float, ...], seed: int) -> pa.Table:
    """``n`` notes; every note names its (unique, hence rare) patient and Dr, as real notes do."""
    rng = random.Random(seed)
    notes, labels, sexes = [], [], []
    for i in range(n):
        dept = rng.choices(list(WORDS), shares)[0]
        words = rng.sample(FILLER, 5) + rng.sample(WORDS[dept], 2)
        rng.shuffle(words)
        notes.append(f"Mrs Patientname{seed}x{i} " + " ".join(words) + f". Dr Doctor{seed}x{i}.")
        labels.append(dept)
        sexes.append(rng.choice("FM"))
    return pa.table({"note": notes, "sex": sexes, "department": labels})


def _sites(n: int = 120) -> list[pa.Table]:
    return [_notes(n, shares, seed) for seed, shares in enumerate(SKEW)]


def _train() -> TrainSpec:
    return FederationSpec.from_dict({"train": TRAIN, "rounds": 1}).train


def _train_rows(table: pa.Table, train: TrainSpec) -> pa.Table:
    idx, _ = site_split(table.column("department").to_pylist(), "classification", train)
    return table.take(pa.array(idx))


def test_a_site_reports_in_how_many_of_its_training_notes_each_word_occurs() -> None:
    train = _train()
    table = _notes(60, SKEW[0], 0)
    idx, val_idx = site_split(table.column("department").to_pylist(), "classification", train)
    notes = table.column("note").to_pylist()
    # A word repeated in one note counts once; a word only in validation notes is not reported.
    notes[int(idx[0])] = notes[int(idx[0])] + " echo echo echo echo echo"
    notes[int(idx[1])] = notes[int(idx[1])] + " echo"
    for i in val_idx[:3]:
        notes[int(i)] += " heldout"
    table = table.set_column(0, "note", pa.array(notes))
    stats = site_statistics(table, SCHEMA, train)
    json.dumps(stats)  # JSON-safe, as SiteRound.statistics stores it
    assert stats["columns"] == []  # the text path reads the text columns only ("sex" is not sent)
    assert stats["n_rows"] == len(idx) and stats["text"]["columns"] == ["note"]
    assert stats["text"]["tokenizer"] == "words" and stats["text"]["normalization"] == "nfkc_casefold"
    reported = dict(stats["text"]["tokens"])
    assert reported["echo"] == 2
    assert "heldout" not in reported
    train_notes = [notes[int(i)] for i in idx]
    expected = sum(1 for t in train_notes if "stable" in tokenize(t))
    assert reported["stable"] == expected
    # Every patient and doctor name is in one note only: none leaves the site.
    assert not [w for w in reported if w.startswith(("patientname", "doctor"))]
    assert min(reported.values()) >= TEXT_SITE_MIN_ROWS
    assert [n for _w, n in stats["text"]["tokens"]] == sorted(reported.values(), reverse=True)
    assert len(reported) <= MAX_REPORTED_TOKENS


def _stats(tokens: dict[str, int], classes: tuple[str, ...] = ("a", "b")) -> dict[str, Any]:
    return {
        "n_rows": 10,
        "columns": [],
        "text": {
            "columns": ["note"],
            "tokenizer": "words",
            "normalization": "nfkc_casefold",
            "tokens": [[w, n] for w, n in tokens.items()],
        },
        "label": {"kind": "classes", "counts": [[c, 5] for c in classes]},
    }


def test_the_merged_vocabulary_keeps_words_that_two_sites_and_five_notes_hold() -> None:
    train = _train()
    stats = [
        _stats({"common": 9, "pair": 3, "alone": 40, "four": 2}),
        _stats({"common": 8, "pair": 2, "four": 2}),
        _stats({"common": 7, "only3": 30}, classes=("b", "c")),
    ]
    enc = merge_statistics(stats, min_rows=5, min_sites=2, max_categories=20, train=train)
    # common: 24 notes at 3 sites; pair: 5 at 2. alone and only3: one site; four: 4 notes.
    assert enc["vocab"] == ["<pad>", "<oov>", "common", "pair"]
    assert enc == {"kind": "text", "columns": ["note"], "vocab": enc["vocab"], "normalization": "nfkc_casefold",
                   "pad_id": 0, "oov_id": 1, "max_len": 24, "label": {"kind": "classes", "classes": ["a", "b", "c"]}}  # fmt: skip
    # data.text_min_freq raises the floor; data.text_max_vocab caps it (the specials included).
    strict = FederationSpec.from_dict({"train": {**TRAIN, "data": {"text_min_freq": 6}}, "rounds": 1}).train
    assert merge_statistics(stats, min_rows=5, min_sites=2, max_categories=20, train=strict)["vocab"][2:] == ["common"]
    small = FederationSpec.from_dict({"train": {**TRAIN, "data": {"text_max_vocab": 3}}, "rounds": 1}).train
    assert merge_statistics(stats, min_rows=5, min_sites=2, max_categories=20, train=small)["vocab"][2:] == ["common"]
    with pytest.raises(DataError, match="share no vocabulary"):
        merge_statistics([_stats({"x": 9}), _stats({"y": 9})], min_rows=5, min_sites=2, max_categories=20,
                         train=train)  # fmt: skip
    other = _stats({"common": 9})
    other["text"]["columns"] = ["summary"]
    with pytest.raises(DataError, match="text columns differ"):
        merge_statistics([stats[0], other], min_rows=5, min_sites=2, max_categories=20, train=train)
    older = _stats({"common": 9})
    del older["text"]["normalization"]  # a worker from before words were NFKC-folded
    with pytest.raises(DataError, match="Site 2 folds its notes' words differently"):
        merge_statistics([stats[0], older], min_rows=5, min_sites=2, max_categories=20, train=train)
    tabular = {"n_rows": 10, "columns": [], "label": stats[0]["label"]}
    with pytest.raises(DataError, match="text and others tabular"):
        merge_statistics([stats[0], tabular], min_rows=5, min_sites=2, max_categories=20, train=train)


def test_round_0_never_builds_a_vocabulary_from_one_site() -> None:
    train = _train()
    stats = [_stats({"common": 9, "pair": 3}), _stats({"common": 8, "pair": 2})]
    assert merge_round_0(stats, train) == merge_statistics(stats, min_rows=5, min_sites=2, max_categories=20,
                                                           train=train)  # fmt: skip
    # The others failed or timed out: one site's words (in 5 or more of its notes) stay its own.
    with pytest.raises(DataError, match="at least 2 training sites; 1 reported"):
        merge_round_0(stats[:1], train)


def test_a_simulation_whose_model_reads_other_input_is_a_dataset_error() -> None:
    fspec = FederationSpec.from_dict({"train": {**TRAIN, "model": {"name": "mlp"}}, "rounds": 1})
    sites = [VirtualSite(i + 1, f"site-{i + 1}", t) for i, t in enumerate(_sites(40))]
    with pytest.raises(SimulationError, match="The model 'mlp' reads tabular input; this dataset is text") as err:
        run(fspec, sites, SCHEMA, secret=b"k" * 32)
    assert err.value.field == "dataset"


def test_every_site_encodes_with_the_merged_vocabulary() -> None:
    train = _train()
    sites = _sites()
    stats = [site_statistics(t, SCHEMA, train) for t in sites]
    enc = merge_statistics(stats, min_rows=5, min_sites=2, max_categories=20, train=train)
    words = enc["vocab"][2:]
    held: dict[str, list[int]] = {}
    for st in stats:
        for w, n in st["text"]["tokens"]:
            held.setdefault(w, []).append(n)
    # Exactly the words at least two sites report in at least five notes in all, the commonest first.
    assert set(words) == {w for w, ns in held.items() if len(ns) >= 2 and sum(ns) >= 5}
    assert [sum(held[w]) for w in words] == sorted((sum(held[w]) for w in words), reverse=True)
    assert set(words) <= set(FILLER) | {w for ws in WORDS.values() for w in ws} | {"mrs", "dr"}
    assert sum(1 for ws in WORDS.values() for w in ws if w in words) >= 20  # most department words
    assert [w for w, ns in held.items() if len(ns) == 1]  # some words only one site reports: left out
    info = model_input_info(enc)
    assert info == {"vocab_size": len(enc["vocab"]), "pad_id": 0, "max_len": 24, "n_outputs": 4}
    state = initial_state(FederationSpec.from_dict({"train": TRAIN, "rounds": 1}), enc)
    assert state["embed.weight"].shape == (len(enc["vocab"]), 16)
    for table in sites:
        p = prepare_with_encoders(table, SCHEMA, train, enc)
        assert p.kind == "text" and p.classes == sorted(WORDS) and p.n_outputs == 4
        assert {k: p.input_info[k] for k in ("vocab_size", "pad_id", "max_len")} == {
            "vocab_size": len(enc["vocab"]),
            "pad_id": 0,
            "max_len": 24,
        }
        notes = table.column("note").to_pylist()
        everything = encode_text(notes, enc)
        assert torch.equal(torch.cat([p.x_train, p.x_val]).sort(0).values, everything.sort(0).values)
        # The patient's name is the note's second token: unknown to the model at every site.
        assert (everything[:, 1] == OOV_ID).all()
    # A site missing the text column, or holding a label the federation does not know, is refused.
    with pytest.raises(DataError, match="text column 'note'"):
        prepare_with_encoders(sites[0].drop(["note"]), SCHEMA, train, enc)
    with pytest.raises(DataError, match="not among the federation's classes"):
        prepare_with_encoders(sites[0], SCHEMA, train, {**enc, "label": {"kind": "classes", "classes": ["x", "y"]}})


def test_a_model_with_its_own_tokenizer_needs_no_words_from_the_sites() -> None:
    train = FederationSpec.from_dict(
        {"train": {**TRAIN, "model": {"name": "minilm", "params": {}}, "data": {"text_max_len": 32}}, "rounds": 1}
    ).train
    sites = _sites(40)
    stats = [site_statistics(t, SCHEMA, train) for t in sites]
    tok = minilm.tokenizer()
    assert all(s["text"]["tokens"] == [] for s in stats)
    assert {s["text"]["tokenizer_sha256"] for s in stats} == {tok.fingerprint}
    enc = merge_statistics(stats, min_rows=5, min_sites=2, max_categories=20, train=train)
    assert enc["tokenizer"] == "minilm" and "vocab" not in enc and enc["tokenizer_sha256"] == tok.fingerprint
    central = prepare_text(sites[0], SCHEMA, train).encoders
    assert {k: v for k, v in enc.items() if k != "label"} == {k: v for k, v in central.items() if k != "label"}
    p = prepare_with_encoders(sites[0], SCHEMA, train, enc)
    assert p.input_info["tokenizer"] == "minilm" and p.input_info["vocab_size"] == tok.vocab_size
    notes = sites[0].column("note").to_pylist()
    idx, _ = site_split(sites[0].column("department").to_pylist(), "classification", train)
    assert torch.equal(p.x_train, tok.encode([notes[int(i)] for i in idx], 32))
    stale = [json.loads(json.dumps(s)) for s in stats]
    stale[1]["text"]["tokenizer_sha256"] = "0" * 64  # a site with another vocabulary file
    with pytest.raises(DataError, match="Site 2 encodes with another minilm vocabulary"):
        merge_statistics(stale, min_rows=5, min_sites=2, max_categories=20, train=train)


def test_schema_checks_name_text_and_model_mismatches() -> None:
    train = _train()
    text = site_schema_summary(SCHEMA, train)
    assert text["input"] == "text" and text["features"] == [["note", "text"]]
    assert compare_schemas({"a": text, "b": text}) == {}
    diffs = compare_schemas({"a": text, "b": site_schema_summary(TABULAR, train)})
    assert set(diffs) == {"b"}
    joined = " ".join(diffs["b"])
    assert "tabular data, a has text data" in joined and "'text_bag' reads text input" in joined
    mlp = TrainSpec.from_dict({"model": {"name": "mlp"}})
    assert (
        "The model 'mlp' reads tabular input; this dataset is text."
        in compare_schemas({"a": site_schema_summary(SCHEMA, mlp)})["a"]
    )
    assert compare_schemas({"a": site_schema_summary(TABULAR, mlp)}) == {}
    images = DatasetSchema([Column("y", "category", "label")], label="y", task="image_classification")
    assert "Image datasets are not federated yet." in compare_schemas({"a": site_schema_summary(images, mlp)})["a"]


@pytest.mark.parametrize(
    ("model", "rounds"),
    [
        ({"name": "text_bag", "params": {"dim": 16}}, 4),
        ({"name": "text_transformer", "params": {"dim": 16, "heads": 2, "layers": 1, "dropout": 0.0}}, 3),
    ],
    ids=["text_bag", "text_transformer"],
)
def test_three_skewed_sites_learn_notes_far_above_the_majority_class(model: dict[str, Any], rounds: int) -> None:
    lr = 0.05 if model["name"] == "text_bag" else 0.01
    fspec = FederationSpec.from_dict(
        {"train": {**TRAIN, "model": model, "optimizer": {"name": "adam", "lr": lr}}, "rounds": rounds}
    )
    tables = _sites()
    sites = [VirtualSite(i + 1, f"site-{i + 1}", t) for i, t in enumerate(tables)]
    result = run(fspec, sites, SCHEMA, secret=b"k" * 32, federation_id=7, local_baseline=True)
    # The majority class of the pooled training notes, scored on every site's validation notes.
    train_labels: Counter[str] = Counter()
    val_labels: list[str] = []
    for t in tables:
        labels = t.column("department").to_pylist()
        idx, val_idx = site_split(labels, "classification", fspec.train)
        train_labels.update(labels[int(i)] for i in idx)
        val_labels += [labels[int(i)] for i in val_idx]
    majority = train_labels.most_common(1)[0][0]
    baseline = sum(1 for v in val_labels if v == majority) / len(val_labels)
    assert baseline < 0.4
    assert result.final_metrics["accuracy"] >= baseline + 0.4, (baseline, result.final_metrics)
    assert result.encoders["kind"] == "text" and not any(w.startswith("patientname") for w in result.encoders["vocab"])
    again = run(fspec, sites, SCHEMA, secret=b"k" * 32, federation_id=7)
    assert state_digest(again.state) == result.model_digest  # the same sites and secret: the same model
    # The global model serves raw notes as a registered text model does (encoders + input info).
    buf = io.BytesIO()
    save_weights(result.state, buf, {})
    loaded = load_model(fspec.train.to_dict(), result.encoders,
                        {**model_input_info(result.encoders), "kind": "text"}, buf.getvalue())  # fmt: skip
    fresh = _notes(40, (0.25, 0.25, 0.25, 0.25), seed=99)
    rows: list[Any] = fresh.column("note").to_pylist()
    rows[0] = {"note": rows[0], "sex": "F"}  # an object keyed by the text column, or the text itself
    out = predict(loaded, rows)
    hits = sum(o["label"] == y for o, y in zip(out, fresh.column("department").to_pylist(), strict=True))
    assert hits / len(rows) >= baseline + 0.4, out
