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

Before any data is touched, :func:`site_schema_summary` and :func:`compare_schemas` check, on the
versions' recorded schemas alone, that the sites agree on the label, the task and every feature
column's name and type.
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
    DataError,
    _numeric,
    label_sort_key,
    problem_of,
    site_split,
)
from workers.training.spec import TrainSpec

MAX_REPORTED_VALUES = 1000  # per categorical column and site: the most frequent ones
NUMERIC_TYPES = ("integer", "float", "date", "datetime", "boolean")


# --- schema agreement -------------------------------------------------------------------------------


def _feature_columns(schema: DatasetSchema) -> list[Any]:
    return [
        c
        for c in schema.columns
        if c.role in FEATURE_ROLES and c.name != schema.label and c.type not in ("text", "image")
    ]


def site_schema_summary(schema: DatasetSchema, train: TrainSpec) -> dict[str, Any]:
    """What must be equal across sites for one model to fit them all (from the schema only)."""
    label_type = schema.column(schema.label).type if schema.label else None
    return {
        "label": schema.label,
        "label_type": label_type,
        "problem": problem_of(schema, label_type or "") if schema.label else None,
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
        if not s.get("label"):
            diffs.append("The schema has no label column.")
        if not s.get("features"):
            diffs.append("The schema has no feature column (text and image columns are not federated yet).")
        if label != ref_label:
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


def site_statistics(table: pa.Table, schema: DatasetSchema, train: TrainSpec) -> dict[str, Any]:
    """Aggregates of the site's training split; JSON-safe; no row-level value."""
    table, problem = labelled_rows(table, schema)
    train_idx, _val_idx = site_split(table.column(schema.label).to_pylist(), problem, train)
    rows = table.take(pa.array(train_idx))
    columns: list[dict[str, Any]] = []
    for c in _feature_columns(schema):
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
    return {"n_rows": int(rows.num_rows), "columns": columns, "label": label}


# --- the server's merge ---------------------------------------------------------------------------------


def _pooled(count: float, total: float, sumsq: float) -> tuple[float, float]:
    if count <= 0:
        return 0.0, 1.0
    mean = total / count
    var = max(sumsq / count - mean * mean, 0.0)
    return mean, math.sqrt(var) or 1.0


def merge_statistics(
    stats: Sequence[Mapping[str, Any]], *, min_rows: int, min_sites: int, max_categories: int
) -> dict[str, Any]:
    """Encoders in :func:`workers.training.data.fit_tabular`'s format (plus ``"label"``).

    Raises :class:`DataError` when the sites disagree on the columns or no site reported.
    """
    if not stats:
        raise DataError("No site reported statistics.")
    ref = [(c["name"], c["type"]) for c in stats[0]["columns"]]
    for i, s in enumerate(stats[1:], 2):
        if [(c["name"], c["type"]) for c in s["columns"]] != ref:
            raise DataError(f"Site {i}'s columns differ from the first site's.")
    kinds = {s["label"]["kind"] for s in stats}
    if len(kinds) != 1:
        raise DataError("The sites disagree on the task (classification or regression).")
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
    return {"kind": "tabular", "columns": columns, "label": label}
