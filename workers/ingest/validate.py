"""Typed parsing of string columns, the validation report, the converting pass and Parquet output.

One parser per logical type turns a string array into its Arrow type plus a mask of the cells that
do not parse. Inference, validation (:func:`workers.ingest.infer.scan`) and conversion
(:func:`convert`) all use the same parsers, so a row that scan counted as an error is exactly the
row convert drops: no list of bad lines has to be carried between the two passes.

Accepted spellings (after trimming whitespace):

* integer: ``[+-]digits`` (at most 18 digits), also ``12.0`` (whole floats from pandas exports).
* float: decimal or scientific notation, ``inf``/``infinity``; no thousands separators or decimal
  commas (ambiguous across locales; such columns stay strings).
* boolean: true/false, yes/no, 1/0, t/f, y/n, case-insensitive.
* date: ``YYYY-MM-DD`` and ``DD/MM/YYYY``. ``MM/DD/YYYY`` is not accepted: the schema has no format
  field, so a slash date always means day first; inference only proposes ``date`` for slash
  columns that are valid day-first dates.
* datetime: ISO 8601 ``YYYY-MM-DD[T ]HH:MM[:SS[.fraction]][Z|+HH:MM|+HHMM|+HH]``; a bare date is
  midnight; values without an offset are taken as UTC; everything is stored as UTC.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers.ingest.errors import IngestError
from workers.ingest.tabular import TableSource
from workers.schema import ARROW_TYPES, TEXTUAL_TYPES, DatasetSchema

INT_RE = r"^[+-]?\d{1,18}$"
INT_LOOSE_RE = r"^[+-]?\d{1,18}(\.0*)?$"
FLOAT_RE = r"(?i)^[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|inf|infinity|nan)$"
BOOL_STRICT_RE = r"(?i)^(true|false|yes|no|t|f|y|n)$"
DATETIME_RE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$"
ZONED_RE = r"[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)$"
TRUE_TOKENS = ["true", "yes", "1", "t", "y"]
FALSE_TOKENS = ["false", "no", "0", "f", "n"]
ROW_ERROR_POLICIES = ("reject", "skip")


# ---------------------------------------------------------------------- fast paths
# Most columns are clean: every value already in the canonical spelling, no whitespace. For those a
# byte-level check (numpy over the Arrow data buffer) plus one strict Arrow cast gives exactly what
# the regex path gives, at a fraction of the cost; anything else falls through to the regex path.
def _byte_set(chars: str) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(chars.encode("ascii"), dtype=np.uint8)] = True
    return table


_DIGIT = _byte_set("0123456789")
_INT_BYTES = _byte_set("0123456789+-")
_FLOAT_BYTES = _byte_set("0123456789+-.eE")


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """``(offsets, data)`` of a plain ``string`` array (offsets sliced to the array), or None."""
    if arr.type != pa.string():
        return None
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    if bufs[2] is None or len(offsets) == 0:
        return offsets, np.zeros(0, dtype=np.uint8)
    data = np.frombuffer(bufs[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return offsets, data


def _only_bytes(arr: pa.Array, table: np.ndarray, max_len: int | None = None) -> bool:
    """Every byte of every value is in ``table`` (and no value is longer than ``max_len``).
    Null slots normally hold no bytes; if they do, the answer may be a false "no" (slow path)."""
    sb = _string_buffers(arr)
    if sb is None:
        return False
    offsets, data = sb
    if max_len is not None and len(offsets) > 1 and int(np.diff(offsets).max()) > max_len:
        return False
    return bool(table[data].all())


def _fixed_layout(arr: pa.Array, layout: str) -> bool:
    """Every valid value is exactly ``layout`` ("d" a digit, "?" any of "T " , anything else that
    literal character) and no null slot holds bytes: a vectorised, exact full-match."""
    sb = _string_buffers(arr)
    if sb is None:
        return False
    offsets, data = sb
    width = len(layout)
    n_valid = len(arr) - arr.null_count
    if n_valid == 0 or len(data) != width * n_valid:
        return False
    lens = np.diff(offsets)
    if arr.null_count:
        valid = pc.is_valid(arr).to_numpy(zero_copy_only=False)
        if not ((lens[valid] == width).all() and (lens[~valid] == 0).all()):
            return False
    elif not (lens == width).all():
        return False
    grid = data.reshape(n_valid, width)
    for pos, ch in enumerate(layout):
        col = grid[:, pos]
        if ch == "d":
            ok = _DIGIT[col].all()
        elif ch == "?":
            ok = ((col == ord("T")) | (col == ord(" "))).all()
        else:
            ok = (col == ord(ch)).all()
        if not ok:
            return False
    return True


def _try_cast(arr: pa.Array, target: pa.DataType) -> pa.Array | None:
    try:
        return pc.cast(arr, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _bad(arr: pa.Array, parsed: pa.Array) -> pa.Array:
    """Cells that held a value but did not parse."""
    if parsed.null_count == arr.null_count:  # parsing only ever adds nulls: none were added
        return pa.array(np.zeros(len(arr), dtype=bool))
    return pc.and_(pc.is_valid(arr), pc.is_null(parsed))


_LENIENT_LEAF = 16


def _cast_lenient(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast, turning unparseable values into nulls. Vectorised; where the regex pre-filter let an
    invalid value through (e.g. 2024-13-45) the batch is halved until the failing slices are small,
    and only those are cast value by value."""
    try:
        return pc.cast(arr, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if len(arr) > _LENIENT_LEAF:
        half = len(arr) // 2
        left, right = _cast_lenient(arr.slice(0, half), target), _cast_lenient(arr.slice(half), target)
        return pa.concat_arrays([left, right])
    out = []
    for i in range(len(arr)):
        try:
            out.append(pc.cast(arr.slice(i, 1), target))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out.append(pa.nulls(1, target))
    return pa.concat_arrays(out) if out else pa.array([], type=target)


def parse_integer(arr: pa.Array) -> pa.Array:
    # Fast path: only digits and signs, at most 18 bytes, and Arrow's strict parse accepts every
    # value (so each is [-]digits: exactly what INT_LOOSE_RE admits, with the same value).
    if _only_bytes(arr, _INT_BYTES, max_len=18):
        fast = _try_cast(arr, pa.int64())
        if fast is not None:
            return fast
    t = pc.utf8_trim_whitespace(arr)
    ok = pc.match_substring_regex(t, INT_LOOSE_RE)
    clean = pc.if_else(ok, t, None)
    clean = pc.replace_substring_regex(clean, r"^\+|\.0*$", "")
    return _cast_lenient(clean, pa.int64())


def parse_float(arr: pa.Array) -> pa.Array:
    # Fast path: only digits, signs, "." and "e", and Arrow's parse accepts every value (those
    # spellings are the ones FLOAT_RE admits; the regex path casts them with the same kernel).
    if _only_bytes(arr, _FLOAT_BYTES):
        fast = _try_cast(arr, pa.float64())
        if fast is not None:
            return fast
    t = pc.utf8_trim_whitespace(arr)
    ok = pc.match_substring_regex(t, FLOAT_RE)
    return _cast_lenient(pc.if_else(ok, t, None), pa.float64())


def parse_boolean(arr: pa.Array) -> pa.Array:
    low = pc.utf8_lower(pc.utf8_trim_whitespace(arr))
    is_true = pc.is_in(low, value_set=pa.array(TRUE_TOKENS))
    is_false = pc.is_in(low, value_set=pa.array(FALSE_TOKENS))
    return pc.if_else(is_true, True, pc.if_else(is_false, False, pa.scalar(None, pa.bool_())))


def _strict_dates(t: pa.Array, pattern: str, fmt: str) -> pa.Array:
    """Parse dates matching ``pattern`` (named groups y, m, d) with ``fmt``; strptime rolls
    2024-02-30 over to March, so the parsed day/month/year must equal the written ones."""
    parts = pc.extract_regex(pc.if_else(pc.match_substring_regex(t, pattern), t, None), pattern)
    ts = pc.strptime(pc.if_else(pc.is_valid(parts), t, None), fmt, "s", True)
    same = pc.and_(
        pc.and_(
            pc.equal(pc.year(ts), pc.cast(pc.struct_field(parts, "y"), pa.int64())),
            pc.equal(pc.month(ts), pc.cast(pc.struct_field(parts, "m"), pa.int64())),
        ),
        pc.equal(pc.day(ts), pc.cast(pc.struct_field(parts, "d"), pa.int64())),
    )
    return pc.if_else(pc.fill_null(same, False), ts, None)


def _iso_dates(arr: pa.Array) -> pa.Array | None:
    """Every value is exactly YYYY-MM-DD and a real date (Arrow's cast rejects 2024-02-30): the
    dates, else None."""
    if not _fixed_layout(arr, "dddd-dd-dd"):
        return None
    return _try_cast(arr, pa.date32())


def parse_date(arr: pa.Array) -> pa.Array:
    fast = _iso_dates(arr)
    if fast is not None:
        return fast
    t = pc.utf8_trim_whitespace(arr)
    iso = _strict_dates(t, r"^(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})$", "%Y-%m-%d")
    dmy = _strict_dates(t, r"^(?P<d>\d{1,2})/(?P<m>\d{1,2})/(?P<y>\d{4})$", "%d/%m/%Y")
    return pc.cast(pc.coalesce(iso, dmy), pa.date32())


def parse_datetime(arr: pa.Array) -> pa.Array:
    utc = pa.timestamp("us", tz="UTC")
    # Fast paths: all bare ISO dates (midnight UTC), or all "YYYY-MM-DD[T ]HH:MM:SS" without an offset
    # (taken as UTC): DATETIME_RE matches, ZONED_RE does not, and the cast is the regex path's own.
    dates = _iso_dates(arr)
    if dates is not None:
        return pc.cast(pc.cast(dates, pa.timestamp("us")), utc)
    if _fixed_layout(arr, "dddd-dd-dd?dd:dd:dd"):
        naive = _try_cast(arr, pa.timestamp("us"))
        if naive is not None:
            return pc.cast(naive, utc)
    t = pc.utf8_trim_whitespace(arr)
    ok = pc.fill_null(pc.match_substring_regex(t, DATETIME_RE), False)
    zoned = pc.and_(ok, pc.fill_null(pc.match_substring_regex(t, ZONED_RE), False))
    naive = pc.and_(ok, pc.invert(zoned))
    z = _cast_lenient(pc.if_else(zoned, t, None), utc)
    n = _cast_lenient(_cast_lenient(pc.if_else(naive, t, None), pa.timestamp("us")), utc)
    return pc.coalesce(z, n)


def parse_text(arr: pa.Array) -> pa.Array:
    return arr


PARSERS = {
    "integer": parse_integer,
    "float": parse_float,
    "boolean": parse_boolean,
    "date": parse_date,
    "datetime": parse_datetime,
    "category": parse_text,
    "string": parse_text,
    "text": parse_text,
    "image": parse_text,
}


def parse_column(arr: pa.Array, ltype: str, *, nullable: bool = True) -> tuple[pa.Array, pa.Array, str]:
    """Parse a string array as ``ltype``: ``(values, bad_mask, reason)``. ``bad_mask`` is a boolean
    array (no nulls) marking cells that do not parse -- or, for a non-nullable column, are missing.
    ``reason`` is the text a row error carries ("expected integer"): it never holds the value."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    values = PARSERS[ltype](arr)
    if ltype in TEXTUAL_TYPES:
        bad = pc.is_null(arr) if not nullable else pa.array(np.zeros(len(arr), dtype=bool))
        return values, bad, "missing value"
    bad = _bad(arr, values)
    if not nullable:
        bad = pc.or_(bad, pc.is_null(arr))
    return values, bad, f"expected {ltype}"


# ---------------------------------------------------------------------- report
@dataclass
class ColumnReport:
    name: str
    type: str
    nulls: int = 0
    rows: int = 0
    distinct: int | str | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "nulls": self.nulls,
            "null_ratio": round(self.nulls / self.rows, 6) if self.rows else 0.0,
            "distinct": self.distinct,
            **self.stats,
        }


@dataclass
class ValidationReport:
    """What a scan found. JSON-safe via :meth:`to_dict`; holds no cell values except label classes
    (``class_balance``) and per-column min/max of numbers and dates."""

    format: str
    encoding: str | None
    delimiter: str | None
    bytes: int
    rows: int = 0
    columns: list[ColumnReport] = field(default_factory=list)
    class_balance: dict[str, int] | None = None
    row_error_count: int = 0
    row_error_rows: int = 0
    row_errors_first: list[dict[str, Any]] = field(default_factory=list)
    position: str = "line"
    ragged_rows: int = 0
    skipped_rows: int = 0
    empty_rows: int = 0
    task: str | None = None
    label: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "encoding": self.encoding,
            "delimiter": self.delimiter,
            "bytes": self.bytes,
            "rows": self.rows,
            "columns_count": len(self.columns),
            "columns": [c.to_dict() for c in self.columns],
            "label": self.label,
            "task": self.task,
            "class_balance": self.class_balance,
            "row_errors": {
                "count": self.row_error_count,
                "rows": self.row_error_rows,
                "first": list(self.row_errors_first),
                "position": self.position,
            },
            "ragged_rows": self.ragged_rows,
            "skipped_rows": self.skipped_rows,
            "empty_rows": self.empty_rows,
            "warnings": list(self.warnings),
        }


def json_number(x: float | int | None) -> float | int | None:
    """NaN/inf are not JSON; report them as None."""
    if x is None:
        return None
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---------------------------------------------------------------------- convert
def _coerce_native(arr: pa.Array, ltype: str) -> pa.Array | None:
    """A Parquet column already in a compatible type, cast without going through strings."""
    target = ARROW_TYPES[ltype]
    if arr.type == target:
        return arr
    t = arr.type
    try:
        if ltype == "integer" and pa.types.is_integer(t):
            return pc.cast(arr, target)
        if ltype == "float" and (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
            return pc.cast(arr, target)
        if ltype == "date" and pa.types.is_date(t):
            return pc.cast(arr, target)
        if ltype == "datetime" and pa.types.is_timestamp(t):
            if t.tz is None:
                arr = pc.cast(arr, pa.timestamp("us"))
            return pc.cast(arr, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return None


def convert(source: TableSource, schema: DatasetSchema, *, on_row_error: str = "reject") -> Iterator[pa.RecordBatch]:
    """Second pass: yield batches typed as ``schema.arrow_schema()``.

    Rows with a cell that does not parse raise ``row_errors`` (``reject``) or are dropped
    (``skip``) -- the same rows :func:`~workers.ingest.infer.scan` counted, because both use
    :func:`parse_column`. Ragged rows found during this pass raise ``ragged_rows``. Memory is one
    batch at a time.
    """
    if on_row_error not in ROW_ERROR_POLICIES:
        raise ValueError(f"on_row_error must be one of {ROW_ERROR_POLICIES}")
    missing = [n for n in schema.names if n not in source.column_names]
    if missing:
        raise IngestError(
            "schema_mismatch", "Declared columns are missing from the file.", {"missing": missing, "extra": []}
        )
    target = schema.arrow_schema()
    limit = source.limits.max_row_errors_reported
    if source.format == "parquet":
        batches: Iterator[tuple[np.ndarray, pa.RecordBatch]] = source.iter_native_batches()
    else:
        batches = ((c.lines, c.batch) for c in source.iter_chunks())
    for lines, batch in batches:
        arrays: list[pa.Array] = []
        bad_any: np.ndarray | None = None
        errors: list[dict[str, Any]] = []
        for col in schema.columns:
            raw = batch.column(col.name)
            native = _coerce_native(raw, col.type) if source.format == "parquet" else None
            if native is not None:
                values = native
                bad_arr = pc.is_null(raw) if not col.nullable else None
                reason = "missing value"
            else:
                s = raw if raw.type == pa.string() else pc.cast(raw, pa.string())
                values, bad_arr, reason = parse_column(s, col.type, nullable=col.nullable)
            if bad_arr is not None:
                bad_np = bad_arr.to_numpy(zero_copy_only=False)
                if bad_np.any():
                    bad_any = bad_np if bad_any is None else (bad_any | bad_np)
                    if on_row_error == "reject":
                        for i in np.flatnonzero(bad_np)[:limit]:
                            reason_i = reason if raw[int(i)].is_valid else "missing value"
                            errors.append({source.position: int(lines[i]), "column": col.name, "reason": reason_i})
            arrays.append(values)
        if bad_any is not None and on_row_error == "reject":
            errors.sort(key=lambda e: e[source.position])
            del errors[limit:]
            raise IngestError(
                "row_errors",
                "Some values do not match the declared types.",
                {"count": len(errors), "first": errors, "position": source.position},
            )
        if bad_any is not None:  # on_row_error == "skip"
            keep = pa.array(~bad_any)
            arrays = [pc.filter(a, keep) for a in arrays]
        out = pa.RecordBatch.from_arrays(arrays, schema=target)
        if out.num_rows:
            yield out
    if source.ragged_count:
        raise IngestError(
            "ragged_rows",
            "Some rows have a different number of fields than the header.",
            {"count": source.ragged_count, "first_lines": list(source.ragged_lines)},
        )


class _NoCloseSink:
    """Adapts a write-only, non-seekable sink (e.g. an encrypting writer) for Arrow: tracks the
    position itself instead of trusting ``tell`` and never closes the caller's sink."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._pos = 0
        self.closed = False

    def write(self, data: Any) -> int:
        n = len(memoryview(data))
        self._sink.write(data)
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        self._sink.flush()

    def close(self) -> None:
        self.flush()
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False


def write_parquet(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, sink: BinaryIO, *, row_group_rows: int = 131072
) -> int:
    """Write batches to ``sink`` as one Parquet file (zstd, row groups of ``row_group_rows``) and
    return the number of rows written. The sink is flushed, never closed: the caller owns it."""
    out = pa.PythonFile(_NoCloseSink(sink), mode="w")
    writer = pq.ParquetWriter(out, schema, compression="zstd")
    rows = 0
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    try:
        for batch in batches:
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= row_group_rows:
                table = pa.Table.from_batches(pending, schema=schema)
                writer.write_table(table, row_group_size=row_group_rows)
                rows += table.num_rows
                pending, pending_rows = [], 0
        if pending:
            table = pa.Table.from_batches(pending, schema=schema)
            writer.write_table(table, row_group_size=row_group_rows)
            rows += table.num_rows
    finally:
        writer.close()
        out.close()
    sink.flush()
    return rows


def utc_iso(value: Any) -> str | None:
    """A date or datetime as ISO text for the report."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return value.isoformat()  # type: ignore[no-any-return]
