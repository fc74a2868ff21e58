"""One streaming pass over a table: infer or check the schema, validate values, profile columns.

:func:`scan` reads string batches once. Without a declared schema it keeps, per column, the set
of logical types every value so far parses as (boolean, integer, float, date, datetime) and drops a
candidate at the first batch that contradicts it -- so the type holds for *all* rows, and integer
widens to float by construction. Whatever survives is typed by priority; columns that are nothing
but text become category, string or text by cardinality and length. With a declared schema it
counts the cells that do not parse as their declared type (row errors).

Profiles never keep cell values: distinct counting uses 64-bit hashes, and only the label column's
classes (which the owner needs to see) are kept by value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workers.ingest.errors import IngestError
from workers.ingest.limits import Limits
from workers.ingest.tabular import TableSource
from workers.ingest.validate import (
    BOOL_STRICT_RE,
    ROW_ERROR_POLICIES,
    ColumnReport,
    ValidationReport,
    _string_buffers,
    json_number,
    parse_column,
    utc_iso,
)
from workers.schema import NUMERIC_TYPES, TEXTUAL_TYPES, Column, DatasetSchema, SchemaError

CANDIDATES: tuple[str, ...] = ("boolean", "integer", "float", "date", "datetime")
CATEGORY_MAX_DISTINCT = 50
CATEGORY_MAX_AVG_LEN = 32
TEXT_MIN_AVG_LEN = 64
TEXT_MIN_AVG_SPACES = 3.0
IMBALANCE_WARN = 20.0


class BatchObserver(Protocol):
    """Sees every string batch of the scan (the PII scanner plugs in here)."""

    def observe(self, first_line: int, batch: pa.RecordBatch) -> None: ...


@dataclass
class ScanResult:
    schema: DatasetSchema
    report: ValidationReport


@dataclass
class _Moments:
    """Streaming count/mean/M2 (Chan et al. merge), min and max."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: Any = None
    hi: Any = None

    def add_numeric(self, arr: pa.Array) -> None:
        vals = arr.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
        vals = vals[np.isfinite(vals)]
        if not len(vals):
            return
        n_b, mean_b = len(vals), float(vals.mean())
        m2_b = float(((vals - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n
        self.add_range(arr)

    def add_range(self, arr: pa.Array) -> None:
        mm = pc.min_max(arr)
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        if lo is None:
            return
        if isinstance(lo, float) and math.isnan(lo):
            return
        self.lo = lo if self.lo is None or lo < self.lo else self.lo
        self.hi = hi if self.hi is None or hi > self.hi else self.hi


@dataclass
class _ColumnState:
    name: str
    fixed: str | None  # declared or native type; None: infer
    nullable: bool = True
    candidates: set[str] = field(default_factory=lambda: set(CANDIDATES))
    nulls: int = 0
    rows: int = 0
    hashes: set[int] | None = field(default_factory=set)
    len_n: int = 0
    len_sum: int = 0
    len_min: int | None = None
    len_max: int | None = None
    spaces: int = 0
    moments: dict[str, _Moments] = field(default_factory=dict)

    def distinct(self, cap: int) -> int | str:
        return f">{cap}" if self.hashes is None else len(self.hashes)


def _track_distinct(state: _ColumnState, arr: pa.Array, cap: int) -> None:
    if state.hashes is None:
        return
    uniq = pc.unique(arr)
    if len(uniq) - uniq.null_count > cap:
        # Over the cap whatever the earlier batches held: stop without hashing anything.
        state.hashes = None
        return
    # Python's hash of the string: 64 bits, collision odds negligible at 10^4 values, and no value kept.
    state.hashes.update(map(hash, uniq.drop_null().to_pylist()))
    if len(state.hashes) > cap:
        state.hashes = None


def _observe_text(state: _ColumnState, arr: pa.Array) -> None:
    n_valid = len(arr) - arr.null_count
    if not n_valid:
        return
    sb = _string_buffers(arr)
    if sb is not None:
        # Fast path, straight from the Arrow buffers: for ASCII text, characters are bytes.
        offsets, data = sb
        lens = np.diff(offsets)
        if arr.null_count:
            lens = lens[pc.is_valid(arr).to_numpy(zero_copy_only=False)]
        if int(lens.sum()) == len(data) and (not len(data) or int(data.max()) < 128):
            lo, hi = int(lens.min()), int(lens.max())
            state.len_n += n_valid
            state.len_sum += len(data)
            state.len_min = lo if state.len_min is None else min(state.len_min, lo)
            state.len_max = hi if state.len_max is None else max(state.len_max, hi)
            state.spaces += int(np.count_nonzero(data == 32))
            return
    vals = arr.drop_null()
    lengths = pc.utf8_length(vals)
    mm = pc.min_max(lengths)
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    state.len_n += len(vals)
    state.len_sum += int(pc.sum(lengths).as_py() or 0)
    state.len_min = lo if state.len_min is None else min(state.len_min, lo)
    state.len_max = hi if state.len_max is None else max(state.len_max, hi)
    state.spaces += int(pc.sum(pc.count_substring(vals, " ")).as_py() or 0)


def _update_inferred(state: _ColumnState, arr: pa.Array) -> None:
    """Drop candidate types this batch contradicts; accumulate stats for the survivors."""
    if arr.null_count == len(arr):
        return
    ints: pa.Array | None = None
    for ltype in list(CANDIDATES):
        if ltype not in state.candidates:
            continue
        if ltype == "boolean":
            # Inference wants words: a 0/1 column is an integer (and a fine binary label).
            ok = pc.all(pc.fill_null(pc.match_substring_regex(pc.utf8_trim_whitespace(arr), BOOL_STRICT_RE), True))
            if not ok.as_py():
                state.candidates.discard(ltype)
            continue
        if ltype == "float" and ints is not None:
            # Every integer spelling is also a float one, with the same (correctly rounded) value:
            # no second parse for an integer column.
            values = pc.cast(ints, pa.float64(), safe=False)
        else:
            values, bad, _ = parse_column(arr, ltype)
            if pc.any(bad).as_py():
                state.candidates.discard(ltype)
                continue
        if ltype == "integer":
            ints = values
        if ltype in NUMERIC_TYPES:
            state.moments.setdefault(ltype, _Moments()).add_numeric(values)
        else:
            state.moments.setdefault(ltype, _Moments()).add_range(values)


def _textual_type(state: _ColumnState, cap: int) -> str:
    if state.len_n == 0:
        return "string"
    avg_len = state.len_sum / state.len_n
    distinct = len(state.hashes) if state.hashes is not None else cap + 1
    if avg_len > TEXT_MIN_AVG_LEN or state.spaces / state.len_n >= TEXT_MIN_AVG_SPACES:
        return "text"
    if distinct <= CATEGORY_MAX_DISTINCT and avg_len <= CATEGORY_MAX_AVG_LEN and distinct <= max(2, state.len_n // 2):
        return "category"
    return "string"


def _final_type(state: _ColumnState, cap: int) -> str:
    if state.fixed is not None:
        return state.fixed
    if state.len_n == 0:
        return "string"
    for ltype in CANDIDATES:
        if ltype in state.candidates:
            return ltype
    return _textual_type(state, cap)


def _column_stats(state: _ColumnState, ltype: str) -> dict[str, Any]:
    if ltype in NUMERIC_TYPES:
        m = state.moments.get(ltype) or state.moments.get("float") or _Moments()
        std = math.sqrt(m.m2 / (m.n - 1)) if m.n > 1 else (0.0 if m.n == 1 else None)
        lo, hi = m.lo, m.hi
        if ltype == "integer":
            lo, hi = (None if lo is None else int(lo)), (None if hi is None else int(hi))
        return {
            "min": json_number(lo),
            "max": json_number(hi),
            "mean": json_number(m.mean) if m.n else None,
            "std": json_number(std),
        }
    if ltype in ("date", "datetime"):
        m = state.moments.get(ltype) or _Moments()
        return {"min": utc_iso(m.lo), "max": utc_iso(m.hi)}
    if ltype in TEXTUAL_TYPES:
        return {
            "min_length": state.len_min,
            "max_length": state.len_max,
            "mean_length": round(state.len_sum / state.len_n, 3) if state.len_n else None,
        }
    return {}


def _reason(arr: pa.Array, i: int, reason: str) -> str:
    """A null flagged as an error is a missing value in a non-nullable column."""
    return reason if arr[i].is_valid else "missing value"


def _infer_task(ltype: str, classes: dict[str, int] | None, rows: int, has_text: bool) -> str | None:
    n = len(classes) if classes is not None else None
    if ltype == "float":
        return "regression"
    if ltype == "integer":
        if n == 2:
            return "binary_classification"
        if n is not None and 3 <= n <= min(100, rows // 10):
            return "multiclass_classification"
        return "regression"
    if ltype in ("boolean", "category", "string", "text"):
        if n is None or n < 2:
            return None
        if has_text and ltype != "text":
            return "text_classification"
        if n == 2:
            return "binary_classification"
        return "multiclass_classification"
    return None


def scan(
    source: TableSource,
    *,
    declared: DatasetSchema | None = None,
    label: str | None = None,
    task: str | None = None,
    on_row_error: str = "reject",
    observers: Sequence[BatchObserver] = (),
    limits: Limits | None = None,
) -> ScanResult:
    """Read ``source`` once; return the (inferred or declared) schema and the validation report.

    Raises ``unknown_label_column``, ``schema_mismatch`` (declared columns missing or extra, or an
    incoherent schema), ``empty_file`` (no data rows), ``ragged_rows`` and -- with
    ``on_row_error="reject"`` -- ``row_errors``. With ``"skip"`` the report's ``skipped_rows``
    says how many rows :func:`~workers.ingest.validate.convert` will drop.
    """
    limits = limits or source.limits
    if on_row_error not in ROW_ERROR_POLICIES:
        raise ValueError(f"on_row_error must be one of {ROW_ERROR_POLICIES}")
    names = source.column_names
    label = label if label is not None else (declared.label if declared else None)
    task = task if task is not None else (declared.task if declared else None)
    if label is not None and label not in names:
        raise IngestError(
            "unknown_label_column", "The label column is not in the file.", {"label": label, "columns": names}
        )
    if declared is not None:
        missing = [n for n in declared.names if n not in names]
        extra = [n for n in names if n not in declared.names]
        if missing or extra:
            raise IngestError(
                "schema_mismatch",
                "The file's columns do not match the declared schema.",
                {"missing": missing, "extra": extra},
            )
        states = {
            c.name: _ColumnState(c.name, fixed=c.type, nullable=c.nullable, candidates=set()) for c in declared.columns
        }
    else:
        states = {n: _ColumnState(n, fixed=source.native_types.get(n)) for n in names}
    cap = limits.max_distinct_tracked
    max_err = limits.max_row_errors_reported
    report = ValidationReport(
        format=source.format,
        encoding=source.encoding,
        delimiter=source.delimiter,
        bytes=source.bytes,
        position=source.position,
    )
    label_counts: dict[str, int] | None = {} if label is not None else None

    for chunk in source.iter_chunks():
        batch, lines = chunk.batch, chunk.lines
        for obs in observers:
            obs.observe(chunk.first_line, batch)
        report.rows += batch.num_rows
        bad_rows: np.ndarray | None = None
        batch_errors: list[dict[str, Any]] = []
        for name in names:
            st = states[name]
            arr = batch.column(name)
            st.rows += len(arr)
            st.nulls += arr.null_count
            _track_distinct(st, arr, cap)
            if st.fixed is None or st.fixed in TEXTUAL_TYPES:  # length stats are reported for text only
                _observe_text(st, arr)
            if st.fixed is None:
                _update_inferred(st, arr)
                continue
            values, bad, reason = parse_column(arr, st.fixed, nullable=st.nullable)
            if st.fixed in NUMERIC_TYPES:
                st.moments.setdefault(st.fixed, _Moments()).add_numeric(values)
            elif st.fixed in ("date", "datetime"):
                st.moments.setdefault(st.fixed, _Moments()).add_range(values)
            bad_np = bad.to_numpy(zero_copy_only=False)
            n_bad = int(bad_np.sum())
            if n_bad:
                report.row_error_count += n_bad
                bad_rows = bad_np if bad_rows is None else (bad_rows | bad_np)
                # Up to ``room`` per column, then the batch's first ``room`` by position: the report
                # lists the file's first errors whatever the batch boundaries.
                room = max_err - len(report.row_errors_first)
                for i in np.flatnonzero(bad_np)[: max(room, 0)]:
                    batch_errors.append(
                        {source.position: int(lines[i]), "column": name, "reason": _reason(arr, int(i), reason)}
                    )
        if batch_errors:
            batch_errors.sort(key=lambda e: e[source.position])
            report.row_errors_first.extend(batch_errors[: max_err - len(report.row_errors_first)])
        if bad_rows is not None:
            report.row_error_rows += int(bad_rows.sum())
        if label_counts is not None and label is not None:
            arr = batch.column(label)
            if bad_rows is not None:
                arr = arr.filter(pa.array(~bad_rows))
            counts = pc.value_counts(arr.drop_null())
            for item in counts.to_pylist():
                key = str(item["values"])
                label_counts[key] = label_counts.get(key, 0) + int(item["counts"])
            if len(label_counts) > limits.max_classes:
                label_counts = None

    report.ragged_rows = source.ragged_count
    report.empty_rows = source.empty_rows
    report.warnings.extend(source.warnings)
    if source.ragged_count:
        raise IngestError(
            "ragged_rows",
            "Some rows have a different number of fields than the header.",
            {"count": source.ragged_count, "first_lines": list(source.ragged_lines), "position": source.position},
        )
    if report.rows == 0:
        raise IngestError("empty_file", "The file has a header but no data rows.", {"columns": names})
    if report.row_error_count:
        if on_row_error == "reject":
            raise IngestError(
                "row_errors",
                "Some values do not match the declared types.",
                {
                    "count": report.row_error_count,
                    "rows": report.row_error_rows,
                    "first": report.row_errors_first,
                    "position": source.position,
                },
            )
        report.skipped_rows = report.row_error_rows

    # ---- schema
    columns: list[Column] = []
    for name in names:
        st = states[name]
        ltype = _final_type(st, cap)
        if declared is not None:
            dc = declared.column(name)
            columns.append(Column(name=dc.name, type=dc.type, role=dc.role, nullable=dc.nullable))
        else:
            if name == label and ltype in TEXTUAL_TYPES and label_counts is not None:
                ltype = "category"
            role = "label" if name == label else "feature"
            columns.append(Column(name=name, type=ltype, role=role, nullable=True))
        report.columns.append(
            ColumnReport(
                name=name,
                type=columns[-1].type,
                nulls=st.nulls,
                rows=st.rows,
                distinct=st.distinct(cap),
                stats=_column_stats(st, columns[-1].type),
            )
        )
        if st.rows and st.nulls == st.rows:
            report.warnings.append(f"column {name!r} is empty (all values missing)")
        elif st.hashes is not None and len(st.hashes) == 1 and st.rows > 1:
            report.warnings.append(f"column {name!r} is constant")
    if label is not None and task is None:
        ltype = next(c.type for c in columns if c.name == label)
        has_text = any(c.type == "text" and c.name != label for c in columns)
        task = _infer_task(ltype, label_counts, report.rows, has_text)
        if task is None:
            report.warnings.append(f"no task could be inferred from the label column {label!r}")
    order = [c.name for c in declared.columns] if declared is not None else names
    columns.sort(key=lambda c: order.index(c.name))
    schema = DatasetSchema(columns=columns, label=label, task=task)
    if declared is not None:
        schema.columns = [Column(c.name, c.type, c.role, c.nullable) for c in declared.columns]
    if label is not None:
        lc = schema.column(label)
        if lc.role == "feature":
            lc.role = "label"
    try:
        schema.check()
    except SchemaError as exc:
        raise IngestError("schema_mismatch", exc.message, {"fields": exc.fields})
    report.label, report.task = label, task
    classification = ("binary_classification", "multiclass_classification", "text_classification")
    if label is not None and task in classification and label_counts is not None:
        report.class_balance = dict(sorted(label_counts.items(), key=lambda kv: (-kv[1], kv[0])))
        if len(label_counts) >= 2:
            hi, lo = max(label_counts.values()), min(label_counts.values())
            if lo and hi / lo > IMBALANCE_WARN:
                report.warnings.append(f"label {label!r} is imbalanced (largest/smallest class > {IMBALANCE_WARN:g}:1)")
    return ScanResult(schema=schema, report=report)
