"""Reading versions out: previews, streamed downloads (Parquet/CSV), query parameters."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.http import StreamingHttpResponse
from rest_framework import parsers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

from apps.common.errors import Conflict
from apps.datasets import services
from apps.datasets.api.serializers import PREVIEW_MAX_ROWS
from apps.datasets.models import DatasetVersion
from apps.datasets.storage import open_decrypted


class OctetStreamParser(parsers.BaseParser):
    """Hands the request stream to the view unread (chunks are encrypted as they are read)."""

    media_type = "application/octet-stream"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return stream


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")


def _preview_images(reader: Any, rows: int) -> tuple[list[str], list[list[Any]]]:
    """The first images of a (validated) zip with their labels, read in place from the decrypting
    reader: member names and labels only, never image bytes."""
    import zipfile

    with zipfile.ZipFile(reader) as zf:
        names = [n for n in zf.namelist() if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith("__MACOSX")]
        labels: dict[str, str] = {}
        if "labels.csv" in zf.namelist():
            with zf.open("labels.csv") as fh:
                for rec in csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8-sig")):
                    labels[rec.get("file", "")] = rec.get("label", "")
    out = [[n, labels.get(n, n.rsplit("/", 1)[0] if "/" in n else "")] for n in names[:rows]]
    return ["image", "label"], out


def preview(version: DatasetVersion, rows: int, key: Any) -> dict[str, Any]:
    reader = open_decrypted(version.tenant_id, services.VERSION_KIND, version.pk, version.storage_name, key)
    if version.format == "zip":
        with reader:
            cols, img_rows = _preview_images(reader, rows)
        return {"version_id": version.pk, "kind": version.kind, "columns": cols, "rows": img_rows}
    with reader:
        pf = pq.ParquetFile(pa.PythonFile(reader, mode="r"), pre_buffer=False)
        table = pa.Table.from_batches(list(_take(pf.iter_batches(batch_size=rows), rows)), schema=pf.schema_arrow)
    cols = table.column_names
    out_rows = [[_jsonable(v) for v in row.values()] for row in table.to_pylist()]
    return {"version_id": version.pk, "kind": version.kind, "columns": cols, "rows": out_rows}


def _take(batches: Iterator[pa.RecordBatch], n: int) -> Iterator[pa.RecordBatch]:
    left = n
    for b in batches:
        if left <= 0:
            return
        yield b.slice(0, left)
        left -= b.num_rows


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return str(v)


def rows_param(request: Request) -> int:
    raw = request.query_params.get("rows", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= PREVIEW_MAX_ROWS:
        raise ValidationError({"rows": [f"An integer from 1 to {PREVIEW_MAX_ROWS}."]})
    return int(raw)


def stream_version(version: DatasetVersion, fmt: str, key: Any) -> StreamingHttpResponse:
    """Decrypt on the fly; Parquet as stored, or CSV converted batch by batch."""

    def parquet_chunks() -> Iterator[bytes]:
        reader = open_decrypted(version.tenant_id, services.VERSION_KIND, version.pk, version.storage_name, key)
        with reader:
            while block := reader.read(1024 * 1024):
                yield block

    def csv_chunks() -> Iterator[bytes]:
        reader = open_decrypted(version.tenant_id, services.VERSION_KIND, version.pk, version.storage_name, key)
        with reader:
            pf = pq.ParquetFile(pa.PythonFile(reader, mode="r"), pre_buffer=False)
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(pf.schema_arrow.names)
            for batch in pf.iter_batches(batch_size=16384):
                for row in batch.to_pylist():
                    w.writerow(["" if v is None else v for v in row.values()])
                yield buf.getvalue().encode()
                buf.seek(0)
                buf.truncate()
            yield buf.getvalue().encode()

    if version.format == "zip":
        fmt = "zip"  # image datasets download as the validated zip
    ds_name = re.sub(r"[^A-Za-z0-9._-]+", "-", version.dataset.name)[:80] or "dataset"
    filename = f"{ds_name}-v{version.number}.{fmt}"
    content_type = {
        "parquet": "application/vnd.apache.parquet",
        "csv": "text/csv; charset=utf-8",
        "zip": "application/zip",
    }[fmt]
    resp = StreamingHttpResponse(csv_chunks() if fmt == "csv" else parquet_chunks(), content_type=content_type)
    resp["Content-Disposition"] = f'attachment; filename="{filename}"'
    resp["Cache-Control"] = "no-store"
    if fmt != "csv":
        resp["Content-Length"] = str(version.size_bytes)
    return resp


def format_param(request: Request) -> str:
    # Not "format": DRF reserves that query parameter for renderer selection.
    fmt = request.query_params.get("file_format", "parquet")
    if fmt not in ("parquet", "csv"):
        raise ValidationError({"file_format": ["One of parquet, csv."]})
    return fmt


def require_ready(version: DatasetVersion) -> None:
    if version.status != DatasetVersion.Status.READY:
        raise Conflict(f"This version is {version.status}; only ready versions can be read.")
