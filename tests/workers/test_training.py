"""Tests for workers.training: spec validation, data preparation (no leakage, stratified seeded
split, encoders re-applicable), models, metrics against scikit-learn, and the engine (accuracy on
small real datasets, determinism, bit-for-bit resume, cooperative stop, precisions).

Pure tests: no database, no Django. Everything runs single-threaded on CPU."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import math
import re
import zipfile
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

from workers.schema import Column, DatasetSchema
from workers.training import metrics
from workers.training.data import (
    DataError,
    Prepared,
    build_vocab,
    encode_tabular,
    encode_text,
    prepare,
    prepare_images,
    prepare_tabular,
    prepare_text,
    split_indices,
    tokenize,
)
from workers.training.engine import (
    NullSink,
    TrainResult,
    TrainState,
    bf16_supported,
    epoch_permutation,
    train,
)
from workers.training.models import available, build
from workers.training.spec import (
    DataSpec,
    EarlyStoppingSpec,
    ModelSpec,
    OptimizerSpec,
    ScheduleSpec,
    SpecError,
    TrainSpec,
)


# --- fixtures & helpers ---------------------------------------------------------------------------
class Recorder(NullSink):
    def __init__(self) -> None:
        self.metrics: list[tuple[int, int, dict[str, float]]] = []
        self.logs: list[str] = []
        self.states: list[TrainState] = []
        self.epochs: list[tuple[int, dict[str, float]]] = []

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        self.metrics.append((step, epoch, values))

    def on_log(self, line: str) -> None:
        self.logs.append(line)

    def on_checkpoint(self, state: TrainState) -> None:
        self.states.append(state)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs.append((epoch, metrics))


def cancer_table() -> tuple[pa.Table, DatasetSchema]:
    """Breast cancer plus an identifier, an ignored column, a category QI, a nullable boolean and a date."""
    d = load_breast_cancer()
    n = len(d.target)
    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {f"f{i}": d.data[:, i] for i in range(d.data.shape[1])}
    cols["patient_id"] = [f"P{i:05d}" for i in range(n)]
    cols["batch_no"] = np.arange(n, dtype=np.int64)
    cols["site"] = [["north", "south", "east", "west", "rare1", "rare2"][i % 6] for i in range(n)]
    cols["flag"] = pa.array([None if i % 7 == 0 else bool(i % 2) for i in range(n)], pa.bool_())
    cols["seen"] = pa.array(
        [datetime.date(2020, 1, 1) + datetime.timedelta(days=int(v)) for v in rng.integers(0, 900, n)], pa.date32()
    )
    cols["diagnosis"] = ["benign" if t == 1 else "malignant" for t in d.target]
    table = pa.table(cols)
    schema = DatasetSchema(
        [Column(f"f{i}", "float") for i in range(d.data.shape[1])]
        + [
            Column("patient_id", "string", "identifier"),
            Column("batch_no", "integer", "ignore"),
            Column("site", "category", "quasi_identifier"),
            Column("flag", "boolean"),
            Column("seen", "date"),
            Column("diagnosis", "category", "label"),
        ],
        label="diagnosis",
        task="binary_classification",
    )
    schema.check()
    return table, schema


@pytest.fixture(scope="module")
def cancer() -> tuple[pa.Table, DatasetSchema]:
    return cancer_table()


def tab_spec(**kw: Any) -> TrainSpec:
    base: dict[str, Any] = {
        "model": ModelSpec("mlp", {"hidden": [32], "dropout": 0.0}),
        "optimizer": OptimizerSpec("adam", lr=1e-2),
        "epochs": 15,
        "batch_size": 32,
        "seed": 7,
        "device": "cpu",
    }
    base.update(kw)
    return TrainSpec(**base)


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def roundtrip(state: TrainState) -> TrainState:
    """Through torch.save / torch.load(weights_only=True), as the checkpoint module will store it."""
    buf = io.BytesIO()
    torch.save(state.to_dict(), buf)
    buf.seek(0)
    return TrainState.from_dict(torch.load(buf, weights_only=True))


# --- spec ----------------------------------------------------------------------------------------------
def test_spec_round_trips_through_json_and_hash_is_stable() -> None:
    spec = tab_spec(
        schedule=ScheduleSpec("cosine", warmup_steps=5),
        early_stopping=EarlyStoppingSpec("val_accuracy", patience=2),
        metrics=("accuracy", "auroc"),
    )
    spec.validate()
    again = TrainSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.spec_hash() == spec.spec_hash()
    # Where and how often a run reports does not change what it computes; the seed does.
    assert TrainSpec(**{**spec.__dict__, "device": "auto", "num_threads": 4}).spec_hash() == spec.spec_hash()
    assert tab_spec(seed=8).spec_hash() != tab_spec(seed=7).spec_hash()


def test_spec_validate_lists_every_problem() -> None:
    spec = TrainSpec(
        model=ModelSpec("resnet9000"),
        optimizer=OptimizerSpec("lion", lr=-1.0, momentum=1.5, betas=(0.9, 1.2)),
        schedule=ScheduleSpec("linear", warmup_steps=-1),
        epochs=0,
        batch_size=0,
        grad_accum_steps=0,
        precision="fp8",
        metrics=("accuracy", "bleu"),
        early_stopping=EarlyStoppingSpec("bleu", patience=0, mode="up"),
        val_fraction=1.0,
        num_threads=0,
        device="tpu",
        data=DataSpec(image_mode="CMYK"),
    )
    with pytest.raises(SpecError) as exc:
        spec.validate()
    expected = {
        "model.name",
        "optimizer.name",
        "optimizer.lr",
        "optimizer.momentum",
        "optimizer.betas",
        "schedule.name",
        "schedule.warmup_steps",
        "epochs",
        "batch_size",
        "grad_accum_steps",
        "precision",
        "metrics",
        "early_stopping.metric",
        "early_stopping.patience",
        "early_stopping.mode",
        "val_fraction",
        "num_threads",
        "device",
        "data.image_mode",
    }
    assert expected <= set(exc.value.fields), set(exc.value.fields) ^ expected


def test_spec_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(SpecError) as exc:
        TrainSpec.from_dict({"epochz": 3, "optimizer": {"name": "sgd", "lr": 0.1, "nesterov": True}})
    assert set(exc.value.fields) == {"epochz", "optimizer.nesterov"}


def test_fp16_on_cpu_is_refused(cancer: tuple[pa.Table, DatasetSchema]) -> None:
    with pytest.raises(SpecError) as exc:
        tab_spec(precision="fp16").validate()
    assert "precision" in exc.value.fields
    if torch.cuda.is_available():
        pytest.skip("CUDA present: fp16 with device=auto is allowed here")
    spec = tab_spec(precision="fp16", device="auto")
    spec.validate()  # statically fine: auto might be CUDA
    with pytest.raises(SpecError, match="fp16"):
        train(spec, prepare_tabular(*cancer, spec), NullSink())


# --- data -------------------------------------------------------------------------------------------
def test_tabular_features_roles_and_encoders(cancer: tuple[pa.Table, DatasetSchema]) -> None:
    table, schema = cancer
    spec = tab_spec(data=DataSpec(max_categories=4))
    p = prepare_tabular(table, schema, spec)
    names = p.feature_names
    assert not any(n.startswith(("patient_id", "batch_no", "diagnosis")) for n in names)
    assert "f0" in names and "seen" in names and "flag" in names and "flag__missing" in names
    # top-4 categories by train frequency plus "other"; the QI is a feature
    assert sum(n.startswith("site=") for n in names) == 5 and "site=<other>" in names
    assert p.x_train.shape == (len(p.train_index), len(names)) and p.x_train.dtype == torch.float32
    assert p.classes == ["benign", "malignant"]
    assert p.decode([1, 0]) == ["malignant", "benign"]
    # nulls: 0 in the value column and 1 in the indicator
    flag_i, miss_i = names.index("flag"), names.index("flag__missing")
    x_all = torch.cat([p.x_train, p.x_val])
    rows = torch.tensor(p.train_index + p.val_index)
    null_rows = rows % 7 == 0
    assert torch.all(x_all[null_rows, flag_i] == 0) and torch.all(x_all[null_rows, miss_i] == 1)
    assert torch.all(x_all[~null_rows, miss_i] == 0)
    # encoders are JSON and re-apply to the same rows (inference path) identically
    enc = json.loads(json.dumps(p.encoders))
    again = encode_tabular(table.take(pa.array(p.val_index)), enc)
    assert torch.equal(again, p.x_val)
    # iterable of record batches gives the same result
    p2 = prepare_tabular(table.to_batches(max_chunksize=100), schema, spec)
    assert torch.equal(p2.x_train, p.x_train)


def test_standardisation_uses_train_rows_only(cancer: tuple[pa.Table, DatasetSchema]) -> None:
    table, schema = cancer
    spec = tab_spec()
    p = prepare_tabular(table, schema, spec)
    raw = table.column("f0").to_numpy()
    col = next(c for c in p.encoders["columns"] if c["name"] == "f0")
    assert col["mean"] == pytest.approx(raw[p.train_index].mean(), rel=1e-12)
    assert col["std"] == pytest.approx(raw[p.train_index].std(), rel=1e-12)
    assert col["mean"] != pytest.approx(raw.mean(), rel=1e-9)
    assert p.x_train[:, p.feature_names.index("f0")].mean().abs() < 1e-5
    # Poison the validation rows: the encoders (and the train tensors) must not move.
    f0 = raw.copy()
    f0[p.val_index] = 1e9
    poisoned = table.set_column(table.schema.get_field_index("f0"), "f0", pa.array(f0))
    q = prepare_tabular(poisoned, schema, spec)
    assert q.val_index == p.val_index
    assert q.encoders == p.encoders
    assert torch.equal(q.x_train, p.x_train)


def test_split_is_stratified_and_seeded() -> None:
    y = np.array([0] * 300 + [1] * 90 + [2] * 10, dtype=np.int64)
    tr, va = split_indices(len(y), 0.2, seed=3, y=y)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(400))
    assert np.bincount(y[va]).tolist() == [60, 18, 2]
    tr2, va2 = split_indices(len(y), 0.2, seed=3, y=y)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    _, va3 = split_indices(len(y), 0.2, seed=4, y=y)
    assert not np.array_equal(va, va3)
    tr_r, va_r = split_indices(101, 0.25, seed=1)
    assert len(va_r) == 25 and len(set(tr_r) | set(va_r)) == 101


def test_null_labels_are_dropped_and_one_class_refused() -> None:
    table = pa.table({"x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "y": ["a", None, "b", "a", "b", "a"]})
    schema = DatasetSchema(
        [Column("x", "float"), Column("y", "category", "label")], label="y", task="binary_classification"
    )
    p = prepare_tabular(table, schema, tab_spec(val_fraction=0.4))
    assert len(p.train_index) + len(p.val_index) == 5
    one = pa.table({"x": [1.0, 2.0, 3.0], "y": ["a", "a", "a"]})
    with pytest.raises(DataError, match="two classes"):
        prepare_tabular(one, schema, tab_spec())


# --- models and metrics -----------------------------------------------------------------------------
def test_registry() -> None:
    assert {"logistic_regression", "mlp", "cnn_small", "text_bag", "text_transformer"} <= set(available())
    m = build("mlp", {"hidden": [8, 4]}, {"n_features": 3, "n_outputs": 2})
    assert m(torch.zeros(5, 3)).shape == (5, 2)
    with pytest.raises(ValueError, match="Unknown model parameter"):
        build("mlp", {"hiddn": [8]}, {"n_features": 3, "n_outputs": 2})
    with pytest.raises(KeyError):
        build("nope", {}, {})
    cnn = build("cnn_small", {}, {"channels": 3, "image_size": 16, "n_outputs": 4})
    assert cnn(torch.zeros(2, 3, 16, 16)).shape == (2, 4)


def test_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p1 = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1).round(2)  # rounding makes ties
    proba = np.stack([1 - p1, p1], axis=1)
    assert metrics.accuracy(y, proba) == pytest.approx(skm.accuracy_score(y, proba.argmax(1)))
    assert metrics.f1_macro(y, proba) == pytest.approx(skm.f1_score(y, proba.argmax(1), average="macro"))
    assert metrics.auroc(y, proba) == pytest.approx(skm.roc_auc_score(y, p1), abs=1e-12)
    y3 = rng.integers(0, 4, 600)
    logits = rng.normal(size=(600, 4)) + np.eye(4)[y3] * 1.5
    logits[:, 3] -= 10  # class 3 never predicted: F1 must count it as 0 like sklearn
    proba3 = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert metrics.accuracy(y3, proba3) == pytest.approx(skm.accuracy_score(y3, proba3.argmax(1)))
    assert metrics.f1_macro(y3, proba3) == pytest.approx(
        skm.f1_score(y3, proba3.argmax(1), average="macro", zero_division=0)
    )
    assert metrics.auroc(y3, proba3) == pytest.approx(
        skm.roc_auc_score(y3, proba3, multi_class="ovr", average="macro"), abs=1e-12
    )
    yt, yp = rng.normal(size=300), rng.normal(size=300)
    assert metrics.rmse(yt, yp) == pytest.approx(math.sqrt(skm.mean_squared_error(yt, yp)))
    assert metrics.mae(yt, yp) == pytest.approx(skm.mean_absolute_error(yt, yp))
    assert metrics.r2(yt, yp) == pytest.approx(skm.r2_score(yt, yp))
    assert math.isnan(metrics.auroc(np.zeros(5, dtype=np.int64), np.full((5, 2), 0.5)))


# --- engine: learning ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["logistic_regression", "mlp"])
def test_breast_cancer_reaches_093(cancer: tuple[pa.Table, DatasetSchema], model: str) -> None:
    spec = tab_spec(model=ModelSpec(model), epochs=20)
    p = prepare(cancer[0], cancer[1], spec)
    sink = Recorder()
    r = train(spec, p, sink)
    assert r.status == "completed" and r.epochs == 20
    assert r.final_metrics["val_accuracy"] >= 0.93, r.final_metrics
    assert r.final_metrics["val_auroc"] >= 0.95
    assert r.steps == 20 * math.ceil(len(p.train_index) / 32)
    assert r.samples_seen == 20 * len(p.train_index) and r.samples_per_second > 0
    assert len(sink.epochs) == 20 and len(sink.states) == 20 and sink.logs
    assert r.best_metrics and r.best_epoch >= 0
    assert r.device == "cpu"


def test_regression_on_diabetes() -> None:
    d = load_diabetes()
    cols: dict[str, Any] = {f"x{i}": d.data[:, i] for i in range(10)}
    cols["y"] = d.target
    schema = DatasetSchema(
        [Column(f"x{i}", "float") for i in range(10)] + [Column("y", "float", "label")], label="y", task="regression"
    )
    spec = tab_spec(
        model=ModelSpec("logistic_regression"), optimizer=OptimizerSpec("sgd", lr=0.05, momentum=0.9), epochs=30
    )
    p = prepare_tabular(pa.table(cols), schema, spec)
    assert p.classes is None and abs(float(p.y_train.mean())) < 1e-5
    r = train(spec, p, NullSink())
    assert r.final_metrics["val_r2"] > 0.3, r.final_metrics
    assert 40 < r.final_metrics["val_rmse"] < 70  # in the label's own units


def _digits_zip(with_csv: bool) -> io.BytesIO:
    from PIL import Image

    d = load_digits()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        rows = ["file,label"]
        for i, (img, t) in enumerate(zip(d.images, d.target, strict=True)):
            png = io.BytesIO()
            Image.fromarray((img * 255 / 16).astype(np.uint8), mode="L").save(png, format="PNG")
            name = f"img/{i:04d}.png" if with_csv else f"digits/{t}/{i:04d}.png"
            zf.writestr(name, png.getvalue())
            rows.append(f"{name},d{t}")
        if with_csv:
            zf.writestr("labels.csv", "\n".join(rows))
    buf.seek(0)
    return buf


def test_cnn_on_digits_reaches_090() -> None:
    spec = TrainSpec(
        model=ModelSpec("cnn_small", {"width": 16}),
        optimizer=OptimizerSpec("adam", lr=3e-3),
        epochs=6,
        batch_size=64,
        seed=1,
        device="cpu",
        data=DataSpec(image_size=8, image_mode="L"),
    )
    p = prepare_images(_digits_zip(with_csv=False), spec)
    assert p.kind == "image" and p.x_train.shape[1:] == (1, 8, 8) and p.classes == [str(i) for i in range(10)]
    r = train(spec, p, NullSink())
    assert r.final_metrics["val_accuracy"] >= 0.9, r.final_metrics
    csv_p = prepare_images(_digits_zip(with_csv=True), spec)
    assert csv_p.classes == [f"d{i}" for i in range(10)] and len(csv_p.val_index) == len(p.val_index)


def _text_dataset(n: int = 600) -> tuple[pa.Table, DatasetSchema]:
    rng = np.random.default_rng(5)
    topics = {
        "sport": ["match", "goal", "team", "coach", "score", "league"],
        "weather": ["rain", "sunny", "storm", "cloud", "forecast", "wind"],
        "finance": ["market", "stock", "bank", "price", "rate", "profit"],
    }
    filler = ["the", "a", "today", "we", "saw", "very", "and", "then", "news", "report"]
    texts, labels = [], []
    for i in range(n):
        label = list(topics)[i % 3]
        words = list(rng.choice(filler, 8)) + list(rng.choice(topics[label], 2))
        rng.shuffle(words)
        texts.append(" ".join(words).capitalize() + ".")
        labels.append(label)
    table = pa.table({"id": list(range(n)), "note": texts, "topic": labels})
    schema = DatasetSchema(
        [Column("id", "integer", "identifier"), Column("note", "text"), Column("topic", "category", "label")],
        label="topic",
        task="text_classification",
    )
    return table, schema


def test_tokenizer_and_vocab() -> None:
    assert tokenize("Hello, WORLD! it's 2024") == ["hello", "world", "it", "s", "2024"]
    vocab = build_vocab(["b a", "a c", "a"], min_freq=2, max_size=10)
    assert vocab == ["<pad>", "<oov>", "a"]
    ids = encode_text(["a zzz", None], {"vocab": vocab, "max_len": 3})
    assert ids.tolist() == [[2, 1, 0], [0, 0, 0]]


def test_words_are_folded_so_every_export_of_a_note_gives_the_same_tokens() -> None:
    composed, decomposed = "Caf\u00e9 na\u00efve", "Cafe\u0301 nai\u0308ve"  # NFC vs NFD (macOS) exports
    assert tokenize(composed) == tokenize(decomposed) == ["caf\u00e9", "na\u00efve"]
    assert tokenize("STRASSE Stra\u00dfe") == ["strasse", "strasse"]  # case folding, not lower()
    assert tokenize("\uff28\uff45\uff4c\uff4c\uff4f \ufb01ne") == ["hello", "fine"]  # full-width, ligature
    # Encoders from before folding (no "normalization" key) keep encoding as they were trained.
    assert tokenize(decomposed, "lower") == ["cafe", "nai", "ve"]
    legacy = {"vocab": ["<pad>", "<oov>", "cafe"], "max_len": 3}
    assert encode_text([decomposed], legacy).tolist() == [[2, 1, 1]]
    folded = {**legacy, "vocab": ["<pad>", "<oov>", "caf\u00e9"], "normalization": "nfkc_casefold"}
    assert encode_text([decomposed, composed], folded).tolist() == [[2, 1, 0], [2, 1, 0]]
    with pytest.raises(DataError, match="Unknown word normalization"):
        tokenize("x", "nfd")


def test_text_bag_learns() -> None:
    table, schema = _text_dataset()
    spec = TrainSpec(
        model=ModelSpec("text_bag", {"dim": 32}),
        optimizer=OptimizerSpec("adam", lr=1e-2),
        epochs=8,
        batch_size=32,
        device="cpu",
        data=DataSpec(text_max_len=16, text_min_freq=2),
    )
    p = prepare(table, schema, spec)
    assert p.kind == "text" and p.x_train.dtype == torch.int64 and p.x_train.shape[1] == 16
    assert p.input_info["vocab_size"] == len(p.encoders["vocab"]) == 2 + 10 + 18  # specials + filler + topic words
    r = train(spec, p, NullSink())
    assert r.final_metrics["val_accuracy"] >= 0.9, r.final_metrics


def test_text_transformer_learns() -> None:
    table, schema = _text_dataset(450)
    spec = TrainSpec(
        model=ModelSpec("text_transformer", {"dim": 32, "heads": 4, "layers": 1, "dropout": 0.0}),
        optimizer=OptimizerSpec("adamw", lr=3e-3),
        epochs=6,
        batch_size=32,
        device="cpu",
        data=DataSpec(text_max_len=12),
    )
    r = train(spec, prepare_text(table, schema, spec), NullSink())
    assert r.final_metrics["val_accuracy"] >= 0.85, r.final_metrics


# --- engine: determinism, resume, stop, precision ----------------------------------------------------
def _resume_spec(**kw: Any) -> TrainSpec:
    return tab_spec(
        model=ModelSpec("mlp", {"hidden": [32, 16], "dropout": 0.2}),  # dropout: the RNG state matters
        optimizer=OptimizerSpec("adamw", lr=5e-3, weight_decay=0.01),
        schedule=ScheduleSpec("cosine", warmup_steps=4),
        epochs=4,
        batch_size=16,
        grad_accum_steps=2,
        checkpoint_every_steps=5,
        **kw,
    )


@pytest.fixture(scope="module")
def small(cancer: tuple[pa.Table, DatasetSchema]) -> Prepared:
    return prepare_tabular(*cancer, _resume_spec())


@pytest.fixture(scope="module")
def full_run(small: Prepared) -> tuple[TrainResult, Recorder]:
    sink = Recorder()
    return train(_resume_spec(), small, sink), sink


def test_same_seed_same_weights(small: Prepared, full_run: tuple[TrainResult, Recorder]) -> None:
    again = train(_resume_spec(), small, NullSink())
    assert states_equal(again.model_state, full_run[0].model_state)
    other = train(_resume_spec(seed=8), small, NullSink())
    assert not states_equal(other.model_state, full_run[0].model_state)
    assert torch.equal(epoch_permutation(50, 1, 2), epoch_permutation(50, 1, 2))
    assert not torch.equal(epoch_permutation(50, 1, 2), epoch_permutation(50, 1, 3))


def test_resume_is_bit_for_bit(small: Prepared, full_run: tuple[TrainResult, Recorder]) -> None:
    result, sink = full_run
    steps_per_epoch = math.ceil(math.ceil(len(small.train_index) / 16) / 2)
    mid = [s for s in sink.states if s.batch_in_epoch != 0 and s.epoch == 1]
    assert mid, "expected a mid-epoch checkpoint"
    epoch_end = [s for s in sink.states if s.batch_in_epoch == 0 and s.epoch == 2]
    for state in (mid[0], epoch_end[0]):
        resumed = train(_resume_spec(), small, NullSink(), resume=roundtrip(state))
        assert states_equal(resumed.model_state, result.model_state), f"resume from step {state.step} diverged"
        assert resumed.history == result.history
        assert resumed.steps == result.steps == 4 * steps_per_epoch
        assert resumed.samples_seen == result.samples_seen
    with pytest.raises(SpecError, match="different spec"):
        train(_resume_spec(seed=99), small, NullSink(), resume=mid[0])


def test_should_stop_stops_within_one_step(small: Prepared, full_run: tuple[TrainResult, Recorder]) -> None:
    calls = {"n": 0}

    def stop_after_7() -> bool:
        calls["n"] += 1
        return calls["n"] > 7

    sink = Recorder()
    r = train(_resume_spec(), small, sink, should_stop=stop_after_7)
    assert r.status == "stopped" and r.steps == 7 and calls["n"] == 8
    assert sink.states[-1].step == 7  # a checkpoint at the stop point ...
    resumed = train(_resume_spec(), small, NullSink(), resume=roundtrip(sink.states[-1]))
    assert states_equal(resumed.model_state, full_run[0].model_state)  # ... that resumes exactly


def test_n_train_is_the_number_of_training_rows(small: Prepared, full_run: tuple[TrainResult, Recorder]) -> None:
    assert full_run[0].n_train == len(small.x_train) == len(small.train_index) > 0
    assert full_run[0].n_train < len(small.x_train) + len(small.x_val)  # the validation rows are not counted


def test_warm_start_loads_init_weights_before_the_first_step(
    small: Prepared, full_run: tuple[TrainResult, Recorder]
) -> None:
    trained = full_run[0].model_state
    originals = {k: v.clone() for k, v in trained.items()}

    def at_once() -> bool:
        return True

    cold = train(_resume_spec(), small, NullSink(), should_stop=at_once)
    warm = train(_resume_spec(), small, NullSink(), init_weights=trained, should_stop=at_once)
    assert cold.steps == warm.steps == 0 and warm.status == "stopped"
    assert states_equal(warm.model_state, trained)  # exactly the given weights, before any step
    assert not states_equal(cold.model_state, trained)
    assert states_equal(trained, originals)  # the caller's tensors are copied, never trained in place
    # Training on from the warm start moves away from it, deterministically.
    one = train(dataclasses.replace(_resume_spec(), epochs=1), small, NullSink(), init_weights=trained)
    again = train(dataclasses.replace(_resume_spec(), epochs=1), small, NullSink(), init_weights=trained)
    assert states_equal(one.model_state, again.model_state) and not states_equal(one.model_state, trained)
    assert one.n_train == full_run[0].n_train


def test_resume_wins_over_init_weights(small: Prepared, full_run: tuple[TrainResult, Recorder]) -> None:
    result, sink = full_run
    mid = next(s for s in sink.states if s.epoch == 1 and s.batch_in_epoch != 0)
    other = {k: torch.zeros_like(v) for k, v in result.model_state.items()}
    resumed = train(_resume_spec(), small, NullSink(), resume=roundtrip(mid), init_weights=other)
    assert states_equal(resumed.model_state, result.model_state)


def test_init_weights_that_do_not_fit_are_a_clear_value_error(
    small: Prepared, full_run: tuple[TrainResult, Recorder]
) -> None:
    good = full_run[0].model_state
    first = next(iter(good))
    floating = next(k for k, v in good.items() if v.is_floating_point())
    cases: list[tuple[Any, str]] = [
        ({k: v for k, v in good.items() if k != first}, f"missing keys: {first}"),
        ({**good, "head.extra": torch.zeros(1)}, "unexpected keys: head.extra"),
        ({**good, first: torch.zeros(*good[first].shape, 2)}, f"{first}: shape"),
        ({**good, floating: torch.full_like(good[floating], float("nan"))}, f"{floating}: not finite"),
        ({**good, first: good[first].tolist()}, f"{first}: not a tensor"),
        ([1, 2], "must be a mapping"),
    ]
    for weights, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            train(dataclasses.replace(_resume_spec(), epochs=1), small, NullSink(), init_weights=weights)


def test_early_stopping(small: Prepared) -> None:
    spec = _resume_spec(early_stopping=EarlyStoppingSpec("val_accuracy", patience=2, min_delta=1.0))
    spec = TrainSpec(**{**spec.__dict__, "epochs": 10})
    r = train(spec, small, NullSink())
    assert r.status == "early_stopped" and r.epochs == 3 and r.best_epoch == 0


def test_bf16_autocast_on_cpu(small: Prepared) -> None:
    if not bf16_supported(torch.device("cpu")):
        pytest.skip("this torch build has no CPU bf16 autocast")
    spec = tab_spec(precision="bf16", epochs=5)
    r = train(spec, small, NullSink())
    assert r.status == "completed" and r.final_metrics["val_accuracy"] >= 0.9
    assert all(v.dtype == torch.float32 for v in r.model_state.values())  # master weights stay fp32


def test_cuda_requested_without_cuda_is_refused(small: Prepared) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(SpecError, match="CUDA"):
        train(tab_spec(device="cuda"), small, NullSink())


def test_wrong_metric_for_task_is_refused(small: Prepared) -> None:
    with pytest.raises(SpecError) as exc:
        train(tab_spec(metrics=("rmse",)), small, NullSink())
    assert "metrics" in exc.value.fields


def test_gather_chunks_and_loss_queue_do_not_change_the_run(
    small: Prepared, full_run: tuple[TrainResult, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop gathers each epoch's rows in chunks and adds the per-batch loss sums up lazily; a
    gather per micro-batch and a sum after every step give the same run, to the bit."""
    from workers.training import engine

    monkeypatch.setattr(engine, "GATHER_BYTES", 1)  # one micro-batch per chunk
    monkeypatch.setattr(engine, "PENDING_LOSSES", 1)  # settle after every step
    sink = Recorder()
    r = train(_resume_spec(), small, sink)
    assert states_equal(r.model_state, full_run[0].model_state)
    assert r.history == full_run[0].history
    expected = [(s.step, s.epoch_loss_sum, s.epoch_samples) for s in full_run[1].states]
    assert [(s.step, s.epoch_loss_sum, s.epoch_samples) for s in sink.states] == expected


def test_metrics_events_see_every_batch_loss(small: Prepared, full_run: tuple[TrainResult, Recorder]) -> None:
    """A metrics event per step (log_every_steps is not part of the spec hash): training is unchanged,
    and each epoch's last step reports the running loss the history then records."""
    sink = Recorder()
    r = train(_resume_spec(log_every_steps=1), small, sink)
    assert states_equal(r.model_state, full_run[0].model_state)
    per_step = [(step, epoch, v) for step, epoch, v in sink.metrics if "lr" in v]
    assert [step for step, _, _ in per_step] == list(range(1, r.steps + 1))
    steps_per_epoch = r.steps // r.epochs
    for e, row in enumerate(r.history):
        _step, epoch, values = per_step[(e + 1) * steps_per_epoch - 1]
        assert epoch == e
        assert values["train_loss"] == row["train_loss"]
    assert 0 < r.eval_seconds < r.seconds


def test_run_settings_are_restored(small: Prepared) -> None:
    import torch.utils.deterministic as det

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory)
    during: list[tuple[int, bool, bool]] = []

    def probe() -> bool:
        during.append(
            (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory)
        )
        return False

    train(tab_spec(epochs=1, num_threads=1), small, NullSink(), should_stop=probe)
    assert during[0] == (1, True, False)  # deterministic kernels, no NaN-filling of fresh memory
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory) == (
        before
    )


def test_train_state_to_dict_is_shallow_and_round_trips(full_run: tuple[TrainResult, Recorder]) -> None:
    state = full_run[1].states[-1]
    d = state.to_dict()
    assert d["model_state"] is state.model_state  # no second copy of every tensor per checkpoint
    back = roundtrip(state)
    assert states_equal(back.model_state, state.model_state)
    assert back.epoch_loss_sum == state.epoch_loss_sum
    assert back.history == state.history


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"nnodes": {}}, "nnodes"),
        ({"nnodes": 0}, "nnodes"),
        ({"nnodes": True}, "nnodes"),
        ({"world_size": 65}, "world_size"),
        ({"world_size": 4, "nnodes": 4, "batch_size": 8}, "batch_size"),
    ],
)
def test_data_parallel_shape_is_validated(extra: dict[str, Any], field: str) -> None:
    spec = TrainSpec.from_dict({"model": {"name": "mlp", "params": {}}, "batch_size": 32, **extra})
    with pytest.raises(SpecError) as ei:
        spec.validate()
    assert field in ei.value.fields


def test_data_parallel_shape_accepted() -> None:
    TrainSpec.from_dict(
        {"model": {"name": "mlp", "params": {}}, "batch_size": 8, "world_size": 2, "nnodes": 4}
    ).validate()
