"""Ingest of uploaded datasets: sniff, stream, validate, infer a schema, convert to typed Arrow.

Pure Python (pyarrow, numpy, charset-normalizer, Pillow); never imports Django. Memory does not
grow with the file: every pass streams bounded batches, archives are read member by member while
counting the bytes actually decompressed, and nothing is ever extracted to disk.

Typical use::

    fmt = detect_format(path, filename)
    source = TableSource.open(path, fmt)
    result = scan(source, label="outcome")              # IngestError on bad input
    batches = convert(source, result.schema)
    write_parquet(batches, result.schema.arrow_schema(), sink)
"""

from __future__ import annotations

from workers.ingest.archive import ZipManifest, image_zip_table, inspect_image_zip, iter_zip_members
from workers.ingest.errors import CODES, IngestError
from workers.ingest.infer import BatchObserver, ScanResult, scan
from workers.ingest.limits import Limits
from workers.ingest.sniff import detect_encoding, detect_format, sniff_delimiter
from workers.ingest.tabular import Chunk, TableSource
from workers.ingest.validate import ValidationReport, convert, parse_column, write_parquet

__all__ = [
    "CODES",
    "BatchObserver",
    "Chunk",
    "IngestError",
    "Limits",
    "ScanResult",
    "TableSource",
    "ValidationReport",
    "ZipManifest",
    "convert",
    "detect_encoding",
    "detect_format",
    "image_zip_table",
    "inspect_image_zip",
    "iter_zip_members",
    "parse_column",
    "scan",
    "sniff_delimiter",
    "write_parquet",
]
