"""The ingest pipeline for one uploaded file: detect the format → scan (validate, infer or check
the schema, PII scan) → convert to typed Arrow → write Parquet into a sink (the caller's
encrypting writer). Two streaming passes over the file; memory does not grow with its size.

Pure Python: the Django layer passes a path in a private temporary folder and a sink.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc

from workers.deid.policy import propose_policy
from workers.deid.scanner import PiiScanner
from workers.ingest import Limits, TableSource, convert, detect_format, image_zip_table, scan, write_parquet
from workers.schema import NUMERIC_TYPES, DatasetSchema


@dataclass
class IngestResult:
    format: str
    schema: DatasetSchema
    validation: dict[str, Any]
    pii_report: dict[str, Any]
    rows: int


def ingest_file(
    path: str, *, filename: str, options: dict[str, Any], sink: BinaryIO, limits: Limits | None = None
) -> IngestResult:
    """Validate ``path`` and write its canonical typed Parquet to ``sink``. Raises IngestError."""
    limits = limits or Limits()
    fmt = options.get("format") or detect_format(path, filename)
    declared = DatasetSchema.from_dict(options["schema"]) if options.get("schema") else None
    if fmt == "zip":
        # Images are stored as the validated zip itself (encrypted by the sink): the decrypting
        # reader is seekable, so ``zipfile`` reads members straight from it at training time.
        schema, report, batches = image_zip_table(path, limits)
        rows = sum(b.num_rows for b in batches)
        with open(path, "rb") as src:
            shutil.copyfileobj(src, sink, 1024 * 1024)
        return IngestResult(fmt, schema, report.to_dict(), {"columns": {}, "summary": {"pii_columns": 0}}, rows)
    source = TableSource.open(
        path, fmt, encoding=options.get("encoding"), delimiter=options.get("delimiter"), limits=limits
    )
    scanner = PiiScanner()
    result = scan(
        source,
        declared=declared,
        label=options.get("label"),
        task=options.get("task"),
        on_row_error=options.get("on_row_error", "reject"),
        observers=[scanner],
        limits=limits,
    )
    schema = result.schema
    rows = write_parquet(
        convert(source, schema, on_row_error=options.get("on_row_error", "reject")), schema.arrow_schema(), sink
    )
    pii = scanner.result(schema)
    pii_report = pii.to_dict()
    # The owner's starting point: always valid for this schema, to be reviewed, never auto-applied.
    pii_report["proposed_policy"] = propose_policy(pii, schema).to_dict()
    return IngestResult(fmt, schema, result.report.to_dict(), pii_report, rows)


class TypedStats:
    """Aggregate statistics accumulated batch by batch, so they can be taken while the batches are
    written (no second pass): rows, per-column nulls, numeric min/max/mean/std, and the label's
    class balance. No values of non-label columns (what a grantee may see)."""

    def __init__(self, schema: DatasetSchema) -> None:
        self.schema = schema
        self.rows = 0
        self.cols: dict[str, dict[str, Any]] = {
            c.name: {"nulls": 0, "n": 0, "sum": 0.0, "sumsq": 0.0, "min": None, "max": None} for c in schema.columns
        }
        self.balance: dict[str, int] = {}

    def add(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        for c in self.schema.columns:
            if c.name not in batch.schema.names:
                continue
            arr = batch.column(c.name)
            st = self.cols[c.name]
            st["nulls"] += arr.null_count
            if c.type in NUMERIC_TYPES:
                valid = pc.drop_null(arr).cast(pa.float64())
                if len(valid):
                    st["n"] += len(valid)
                    st["sum"] += pc.sum(valid).as_py()
                    st["sumsq"] += pc.sum(pc.multiply(valid, valid)).as_py()
                    mn, mx = pc.min_max(valid).values()
                    st["min"] = mn.as_py() if st["min"] is None else min(st["min"], mn.as_py())
                    st["max"] = mx.as_py() if st["max"] is None else max(st["max"], mx.as_py())
            if c.name == self.schema.label and c.type not in ("float",):
                for item in pc.value_counts(arr).to_pylist():
                    key = str(item["values"])
                    self.balance[key] = self.balance.get(key, 0) + int(item["counts"])
                    if len(self.balance) > 100:
                        break

    def tap(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Pass the batches through, accumulating as they go by."""
        for batch in batches:
            self.add(batch)
            yield batch

    def result(self) -> dict[str, Any]:
        columns = []
        for c in self.schema.columns:
            st = self.cols[c.name]
            out: dict[str, Any] = {"name": c.name, "type": c.type, "nulls": st["nulls"]}
            if c.type in NUMERIC_TYPES and st["n"]:
                mean = st["sum"] / st["n"]
                var = max(st["sumsq"] / st["n"] - mean * mean, 0.0)
                out.update(min=st["min"], max=st["max"], mean=mean, std=math.sqrt(var))
            columns.append(out)
        return {"rows": self.rows, "columns": columns, "class_balance": self.balance if self.schema.label else {}}
