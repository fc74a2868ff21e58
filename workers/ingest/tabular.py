"""Streaming readers for tabular uploads: CSV/TSV, JSON Lines and Parquet.

Every reader yields bounded record batches, so memory stays flat however large the file is; the
reader is re-opened for each pass (scan, then convert) rather than caching anything.

CSV/TSV goes through ``pyarrow.csv.open_csv`` with every column read as a string (typing is ours,
in :mod:`workers.ingest.validate`, so a stray value becomes a row error rather than a silently
re-typed column). Quoted fields may contain newlines and delimiters.

Positions. Each batch comes with the 1-based *physical line number* of every row (the header is
line 1) for CSV/TSV and JSON Lines: Arrow reports record numbers, and we add the newlines found
inside quoted values and count blank lines, so numbers stay exact with multi-line fields. Parquet
has no lines: its positions are 1-based record numbers and :attr:`TableSource.position` says
``"record"``.

Blank lines (and rows whose every cell is empty) carry nothing and are dropped, counted in
:attr:`TableSource.empty_rows`.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from workers.ingest.errors import IngestError
from workers.ingest.limits import Limits, MiB
from workers.ingest.sniff import detect_encoding, sniff_delimiter

# Tokens read as a missing value in text formats (compared exactly, before trimming).
NULL_TOKENS: tuple[str, ...] = ("", "NA", "N/A", "n/a", "NULL", "null", "None", "NaN", "nan", "#N/A")
# Arrow's streaming CSV reader keeps ~40 blocks in flight (readahead + parse buffers), so the block
# size sets the reader's memory: 1 MiB ≈ 40 MB, 4 MiB ≈ 160 MB, independent of the file size.
_BLOCK_SIZE = 1 * MiB
_JSONL_MAX_LINE = 64 * MiB
# Chunks handed to scan/convert: at most ``batch_rows`` rows and (about) this many bytes of cells.
_CHUNK_BYTES = 16 * MiB


@dataclass
class Chunk:
    """One batch of string columns plus the position (line or record number) of each row."""

    batch: pa.RecordBatch
    lines: np.ndarray  # int64, same length as batch

    @property
    def first_line(self) -> int:
        return int(self.lines[0]) if len(self.lines) else 0


def _newlines_per_row(batch: pa.RecordBatch) -> np.ndarray | None:
    """Newlines inside each row's values, or None when there are none (the common, fast case)."""
    total: np.ndarray | None = None
    for col in batch.columns:
        if col.null_count == len(col):
            continue
        bufs = col.buffers()
        data = bufs[2] if len(bufs) > 2 else None
        if col.offset == 0 and data is not None and not (np.frombuffer(data, dtype=np.uint8) == 10).any():
            continue
        counts = pc.fill_null(pc.count_substring(col, "\n"), 0).to_numpy(zero_copy_only=False)
        total = counts.astype(np.int64) if total is None else total + counts
    if total is None or not total.any():
        return None
    return total


def _all_empty_mask(batch: pa.RecordBatch) -> np.ndarray | None:
    """Rows whose every cell is null (blank lines, or ``,,,``); None when there are none."""
    if batch.num_columns == 0 or batch.num_rows == 0:
        return None
    if any(col.null_count == 0 for col in batch.columns):
        return None
    mask = pc.is_null(batch.column(0))
    for col in batch.columns[1:]:
        mask = pc.and_(mask, pc.is_null(col))
    arr = mask.to_numpy(zero_copy_only=False)
    return arr if arr.any() else None


class TableSource:
    """A re-readable tabular file. Build it with :meth:`open`.

    Attributes: ``path``, ``format``, ``encoding``, ``delimiter``, ``column_names``, ``position``
    (``"line"`` or ``"record"``), ``bytes``; after a pass: ``ragged_count``, ``ragged_lines``
    (first N), ``empty_rows``. ``native_types`` maps each Parquet column to the logical type its
    physical type implies (None: a string column, to be inferred); empty for text formats.
    """

    def __init__(
        self,
        path: str,
        fmt: str,
        *,
        column_names: list[str],
        encoding: str | None,
        delimiter: str | None,
        batch_rows: int,
        limits: Limits,
        raw_names: list[str] | None = None,
        native_types: dict[str, str | None] | None = None,
    ) -> None:
        self.path = path
        self.format = fmt
        self.column_names = column_names
        self.encoding = encoding
        self.delimiter = delimiter
        self.batch_rows = batch_rows
        self.limits = limits
        self.bytes = os.path.getsize(path)
        self.position = "record" if fmt == "parquet" else "line"
        self.native_types: dict[str, str | None] = native_types or {}
        self.warnings: list[str] = []
        self._raw_names = raw_names or column_names
        self.ragged_count = 0
        self.ragged_lines: list[int] = []
        self.empty_rows = 0

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str,
        fmt: str,
        *,
        encoding: str | None = None,
        delimiter: str | None = None,
        batch_rows: int = 65536,
        limits: Limits | None = None,
    ) -> TableSource:
        """Check the file's size and header and return a source ready to iterate.

        Raises ``empty_file``, ``too_large``, ``no_header``, ``duplicate_columns``, the encoding
        errors of :func:`detect_encoding`, ``parquet_unreadable`` or ``jsonl_invalid``.
        """
        limits = limits or Limits()
        size = os.path.getsize(path)
        if size == 0:
            raise IngestError("empty_file", "The file is empty.")
        if size > limits.max_bytes:
            raise IngestError("too_large", "The file is larger than allowed.", {"bytes": size, "max": limits.max_bytes})
        if fmt in ("csv", "tsv"):
            return cls._open_csv(path, fmt, encoding, delimiter, batch_rows, limits)
        if fmt == "jsonl":
            return cls._open_jsonl(path, encoding, batch_rows, limits)
        if fmt == "parquet":
            return cls._open_parquet(path, batch_rows, limits)
        raise IngestError("unsupported_format", f"Format {fmt!r} is not a tabular format.", {"format": fmt})

    @classmethod
    def _open_csv(
        cls, path: str, fmt: str, encoding: str | None, delimiter: str | None, batch_rows: int, limits: Limits
    ) -> TableSource:
        encoding = encoding or detect_encoding(path, limits)
        if delimiter is None:
            if fmt == "tsv":
                delimiter = "\t"
            else:
                with open(path, encoding=encoding, errors="replace", newline="") as f:
                    delimiter = sniff_delimiter(f.read(1 << 16))
        try:
            # errors="replace": the buffered reader decodes past the header; invalid bytes further
            # on are the CSV reader's to report, with their position.
            with open(path, encoding=encoding, errors="replace", newline="") as f:
                header = next(csv.reader(f, delimiter=delimiter), None)
        except csv.Error:
            raise IngestError("no_header", "The first line is not a readable header.", {"line": 1})
        if header is None or not any(h.strip() for h in header):
            raise IngestError("empty_file", "The file has no header and no data.", {})
        if any("\ufffd" in h for h in header):
            raise IngestError("wrong_encoding", f"The header is not valid {encoding}.", {"line": 1})
        names = cls._check_names(header, limits)
        src = cls(
            path,
            fmt,
            column_names=names,
            encoding=encoding,
            delimiter=delimiter,
            batch_rows=batch_rows,
            limits=limits,
            raw_names=header,
        )
        if any(not h.strip() for h in header):
            src.warnings.append("empty column names were replaced by column_<n>")
        return src

    @staticmethod
    def _check_names(header: list[str], limits: Limits) -> list[str]:
        if len(header) > limits.max_columns:
            raise IngestError(
                "too_large", "The file has too many columns.", {"columns": len(header), "max": limits.max_columns}
            )
        with_nul = [i + 1 for i, h in enumerate(header) if "\x00" in h]
        if with_nul:
            # Column names become metadata (schema, reports) that PostgreSQL cannot store with a
            # NUL; the names themselves are not echoed (they hold the NUL).
            raise IngestError(
                "nul_character", "Column names may not contain NUL characters.", {"column_positions": with_nul}
            )
        names = [h.strip() or f"column_{i + 1}" for i, h in enumerate(header)]
        stripped = [h.strip() for h in header]
        if len(header) > 1 and all(_looks_numeric(h) for h in stripped if h) and any(stripped):
            # A first row of numbers is data: the file has no header (and we never guess names).
            raise IngestError("no_header", "The first line looks like data, not column names.", {"line": 1})
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise IngestError("duplicate_columns", "Column names must be unique.", {"columns": dupes})
        return names

    @classmethod
    def _open_jsonl(cls, path: str, encoding: str | None, batch_rows: int, limits: Limits) -> TableSource:
        encoding = encoding or detect_encoding(path, limits)
        keys: dict[str, None] = {}
        for seen, (_line, obj) in enumerate(_iter_jsonl(path, encoding), start=1):
            for k in obj:
                keys.setdefault(str(k), None)
            if seen >= batch_rows:
                break
        if not keys:
            raise IngestError("empty_file", "The file holds no JSON objects with keys.", {})
        names = cls._check_names(list(keys), limits)
        return cls(
            path, "jsonl", column_names=names, encoding=encoding, delimiter=None, batch_rows=batch_rows, limits=limits
        )

    @classmethod
    def _open_parquet(cls, path: str, batch_rows: int, limits: Limits) -> TableSource:
        try:
            pf = pq.ParquetFile(path)
            arrow_schema = pf.schema_arrow
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise IngestError("parquet_unreadable", "The Parquet file cannot be read.", {"reason": type(exc).__name__})
        names = cls._check_names([f.name for f in arrow_schema], limits)
        native: dict[str, str | None] = {}
        for f in arrow_schema:
            ltype = _logical_from_arrow(f.type)
            if ltype == "unsupported":
                raise IngestError(
                    "unsupported_format",
                    "Nested or binary Parquet columns are not supported.",
                    {"column": f.name, "arrow_type": str(f.type)},
                )
            native[f.name] = ltype
        return cls(
            path,
            "parquet",
            column_names=names,
            encoding=None,
            delimiter=None,
            batch_rows=batch_rows,
            limits=limits,
            native_types=native,
        )

    # ------------------------------------------------------------------ iteration
    def iter_string_batches(self) -> Iterator[tuple[int, pa.RecordBatch]]:
        """Yield ``(first_line, batch)`` with every column as Arrow string (nulls for empty cells).
        Per-row positions are in :meth:`iter_chunks`."""
        for chunk in self.iter_chunks():
            yield chunk.first_line, chunk.batch

    def iter_chunks(self) -> Iterator[Chunk]:
        """Yield :class:`Chunk` s of string columns, each row with its line (or record) number."""
        self.ragged_count, self.ragged_lines, self.empty_rows = 0, [], 0
        if self.format in ("csv", "tsv"):
            yield from self._iter_csv()
        elif self.format == "jsonl":
            yield from self._iter_jsonl()
        else:
            for lines, batch in self._iter_parquet():
                strings = _stringify(batch)
                self._check_nul(strings, lines)
                yield Chunk(strings, lines)

    def iter_native_batches(self) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
        """Parquet only: ``(record_numbers, batch)`` in the file's own types, for a cast-free convert."""
        if self.format != "parquet":
            raise ValueError("native batches exist for Parquet only")
        yield from self._iter_parquet()

    def _clean(self, batch: pa.RecordBatch, lines: np.ndarray) -> tuple[pa.RecordBatch, np.ndarray]:
        """Check field sizes and drop the all-empty rows (counted in ``empty_rows``)."""
        self._check_field_sizes(batch, lines)
        self._check_nul(batch, lines)
        empty = _all_empty_mask(batch)
        if empty is not None:
            keep = ~empty
            self.empty_rows += int(empty.sum())
            batch = batch.filter(pa.array(keep))
            lines = lines[keep]
        return batch, lines

    def _slice(self, batch: pa.RecordBatch, lines: np.ndarray) -> Iterator[Chunk]:
        batch, lines = self._clean(batch, lines)
        for start in range(0, batch.num_rows, self.batch_rows):
            yield Chunk(batch.slice(start, self.batch_rows), lines[start : start + self.batch_rows])

    def _check_nul(self, batch: pa.RecordBatch, lines: np.ndarray) -> None:
        """Refuse NUL characters in cells: values become metadata (label classes, PII report
        examples, category counts) in PostgreSQL text/jsonb, which cannot hold U+0000."""
        for name, col in zip(batch.schema.names, batch.columns, strict=True):
            if col.null_count == len(col) or not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                continue
            hits = pc.match_substring(col, "\x00").fill_null(False)
            if pc.any(hits).as_py():
                row = int(np.flatnonzero(hits.to_numpy(zero_copy_only=False))[0])
                raise IngestError(
                    "nul_character",
                    "Values may not contain NUL characters.",
                    {"column": name, self.position: int(lines[row])},
                )

    def _check_field_sizes(self, batch: pa.RecordBatch, lines: np.ndarray) -> None:
        for name, col in zip(batch.schema.names, batch.columns, strict=True):
            if col.null_count == len(col):
                continue
            lengths = pc.binary_length(col)
            biggest = pc.max(lengths).as_py()
            if biggest is not None and biggest > self.limits.max_field_bytes:
                row = int(np.argmax(lengths.fill_null(0).to_numpy(zero_copy_only=False)))
                raise IngestError(
                    "too_large",
                    "A value is larger than allowed.",
                    {"column": name, self.position: int(lines[row]), "max_field_bytes": self.limits.max_field_bytes},
                )

    def _iter_csv(self) -> Iterator[Chunk]:
        pending: list[tuple[int, int]] = []  # (record number, newlines in the invalid row)
        reported: list[tuple[int, int]] = []  # the same, as the reader reports them (its thread)

        def on_invalid(row: Any) -> str:
            # Called by the (serial) reader for a row with the wrong number of fields. Keep only the
            # record number and its newline count; the row text may contain PII and is dropped here.
            reported.append((int(row.number), (row.text or "").count("\n")))
            return "skip"

        enc = self.encoding or "utf-8"
        arrow_enc = "utf8" if codecs.lookup(enc).name in ("utf-8", "utf-8-sig") else enc
        read_opts = pacsv.ReadOptions(
            # Serial on purpose: with use_threads=True Arrow cannot number invalid rows (row.number
            # is None), and the exact line numbers above depend on it.
            use_threads=False,
            block_size=max(_BLOCK_SIZE, 2 * self.limits.max_field_bytes),
            encoding=arrow_enc,
        )
        parse_opts = pacsv.ParseOptions(
            delimiter=self.delimiter or ",",
            newlines_in_values=True,
            ignore_empty_lines=False,
            invalid_row_handler=on_invalid,
        )
        conv_opts = pacsv.ConvertOptions(
            column_types={raw: pa.string() for raw in self._raw_names},
            null_values=list(NULL_TOKENS),
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        )
        try:
            reader = pacsv.open_csv(
                self.path, read_options=read_opts, parse_options=parse_opts, convert_options=conv_opts
            )
        except pa.ArrowInvalid as exc:
            raise _csv_error(exc, None)
        chunker = _Chunker(self.batch_rows)
        prefetch = _Prefetcher(reader, reported)
        try:
            yield from self._number_csv(prefetch, pending, chunker)
        finally:
            prefetch.close()

    def _number_csv(self, prefetch: _Prefetcher, pending: list[tuple[int, int]], chunker: _Chunker) -> Iterator[Chunk]:
        """Give every row of the reader's batches its physical line number (see module docstring)."""
        limit = self.limits.max_row_errors_reported
        next_record = 2  # the header is record 1, line 1
        extra_newlines = 0  # newlines inside quoted values (and skipped rows) seen so far
        last_line = 1
        while True:
            raw, exc, invalid = prefetch.get()
            # Exactly the invalid rows the serial reader had reported by the end of this read.
            pending.extend(invalid)
            if exc is not None:
                if isinstance(exc, pa.ArrowInvalid):
                    raise _csv_error(exc, last_line)
                raise exc
            if raw is None:
                break
            batch = _as_strings(raw, self.column_names)
            n = batch.num_rows
            pending.sort()
            # Record numbers of this batch's rows: consecutive from next_record, minus skipped rows
            # (vectorised: the first n numbers from next_record that are not a skipped record).
            p = 0
            if pending:
                skipped_recs = np.fromiter((rec for rec, _ in pending), dtype=np.int64, count=len(pending))
                span = np.arange(next_record, next_record + n + len(pending), dtype=np.int64)
                records = span[~np.isin(span, skipped_recs)][:n]
                r = int(records[-1]) + 1 if n else next_record
                p = int(np.searchsorted(skipped_recs, r, side="left"))
            else:
                records = np.arange(next_record, next_record + n, dtype=np.int64)
                r = next_record + n
            # Skipped rows right after the batch (before the next batch's first row).
            while p < len(pending) and pending[p][0] == r:
                p, r = p + 1, r + 1
            skipped_here: list[tuple[int, int]] = pending[:p]
            del pending[:p]
            inner = _newlines_per_row(batch)
            row_extra = np.zeros(n, dtype=np.int64) if inner is None else inner
            # Newlines before each row: everything so far + earlier rows of this batch + skipped rows before it.
            before = extra_newlines + np.concatenate(([0], np.cumsum(row_extra)[:-1])) if n else np.zeros(0, np.int64)
            if skipped_here:
                sk_rec = np.array([s[0] for s in skipped_here], dtype=np.int64)
                sk_nl = np.array([s[1] for s in skipped_here], dtype=np.int64)
                sk_cum = np.cumsum(sk_nl)
                # For each row, newlines of skipped rows with a smaller record number.
                idx = np.searchsorted(sk_rec, records, side="left")
                before = before + np.where(idx > 0, sk_cum[np.maximum(idx - 1, 0)], 0)
                # Line numbers of the skipped (ragged) rows themselves.
                rows_before = np.searchsorted(records, sk_rec, side="left")
                valid_cum = np.concatenate(([0], np.cumsum(row_extra)))
                sk_lines = sk_rec + extra_newlines + valid_cum[rows_before] + (sk_cum - sk_nl)
                self.ragged_count += len(skipped_here)
                room = limit - len(self.ragged_lines)
                if room > 0:
                    self.ragged_lines.extend(int(x) for x in sk_lines[:room])
                extra_newlines += int(sk_nl.sum())
            lines = records + before
            extra_newlines += int(row_extra.sum())
            next_record = r
            if n:
                last_line = int(lines[-1])
                yield from chunker.add(*self._clean(batch, lines))
        yield from chunker.finish()
        # Ragged rows after the last batch (trailing lines).
        for rec, nl in sorted(pending):
            self.ragged_count += 1
            if len(self.ragged_lines) < limit:
                self.ragged_lines.append(rec + extra_newlines)
            extra_newlines += nl

    def _iter_jsonl(self) -> Iterator[Chunk]:
        names = self.column_names
        known = set(names)
        cols: dict[str, list[str | None]] = {n: [] for n in names}
        lines: list[int] = []

        def flush() -> Chunk:
            batch = pa.RecordBatch.from_arrays([pa.array(cols[n], type=pa.string()) for n in names], names=names)
            chunk = Chunk(batch, np.array(lines, dtype=np.int64))
            for v in cols.values():
                v.clear()
            lines.clear()
            return chunk

        for line_no, obj in _iter_jsonl(self.path, self.encoding or "utf-8"):
            for k in obj:
                if k not in known:
                    raise IngestError(
                        "jsonl_invalid",
                        "A record has a key that the first records do not have.",
                        {"line": line_no, "column": str(k), "reason": "unexpected key"},
                    )
            for n in names:
                cols[n].append(_json_cell(obj.get(n)))
            lines.append(line_no)
            if len(lines) >= self.batch_rows:
                yield from self._slice_plain(flush())
        if lines:
            yield from self._slice_plain(flush())

    def _slice_plain(self, chunk: Chunk) -> Iterator[Chunk]:
        yield from self._slice(chunk.batch, chunk.lines)

    def _iter_parquet(self) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
        try:
            pf = pq.ParquetFile(self.path)
            record = 1
            for batch in pf.iter_batches(batch_size=self.batch_rows):
                lines = np.arange(record, record + batch.num_rows, dtype=np.int64)
                record += batch.num_rows
                yield lines, _decode_dictionaries(batch)
        except (pa.ArrowException, OSError, ValueError) as exc:
            if isinstance(exc, IngestError):
                raise
            raise IngestError("parquet_unreadable", "The Parquet file cannot be read.", {"reason": type(exc).__name__})


# ---------------------------------------------------------------------- helpers
class _Prefetcher:
    """Reads the CSV reader's next batches on a helper thread (Arrow releases the GIL while it
    parses) so that parsing overlaps the caller's work on the current batch. The reader itself stays
    serial; each item carries the invalid rows the reader reported up to the end of that read, so the
    consumer sees exactly what a serial loop would. At most ``depth`` batches wait (flat memory)."""

    def __init__(self, reader: Any, reported: list[tuple[int, int]], depth: int = 2) -> None:
        self._reader = reader
        self._reported = reported
        self._taken = 0
        self._queue: queue.Queue[tuple[pa.RecordBatch | None, BaseException | None, list[tuple[int, int]]]]
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="csv-prefetch", daemon=True)
        self._thread.start()

    def _new_invalid(self) -> list[tuple[int, int]]:
        end = len(self._reported)
        new = self._reported[self._taken : end]
        self._taken = end
        return new

    def _put(self, item: tuple[pa.RecordBatch | None, BaseException | None, list[tuple[int, int]]]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                self._put((None, None, self._new_invalid()))
                return
            except BaseException as exc:  # handed to the consumer, which raises it
                self._put((None, exc, self._new_invalid()))
                return
            if not self._put((batch, None, self._new_invalid())):
                return

    def get(self) -> tuple[pa.RecordBatch | None, BaseException | None, list[tuple[int, int]]]:
        """``(batch, None, invalid)``; at the end ``(None, None, invalid)``; on failure ``(None, exc, invalid)``."""
        return self._queue.get()

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a waiting put, drop what was read ahead
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


class _Chunker:
    """Re-cuts the reader's small batches (one per ~1 MiB block) into chunks of ``batch_rows`` rows,
    or fewer once ``_CHUNK_BYTES`` are buffered: every later step costs a fixed Python overhead
    per batch and column, so bigger batches are cheaper, and the byte bound keeps wide rows flat."""

    def __init__(self, batch_rows: int) -> None:
        self.batch_rows = batch_rows
        self._parts: list[tuple[pa.RecordBatch, np.ndarray]] = []
        self._rows = 0
        self._bytes = 0

    def add(self, batch: pa.RecordBatch, lines: np.ndarray) -> Iterator[Chunk]:
        if batch.num_rows:
            self._parts.append((batch, lines))
            self._rows += batch.num_rows
            self._bytes += batch.nbytes
        while self._rows >= self.batch_rows or (self._rows and self._bytes >= _CHUNK_BYTES):
            yield self._take(min(self._rows, self.batch_rows))

    def finish(self) -> Iterator[Chunk]:
        while self._rows:
            yield self._take(min(self._rows, self.batch_rows))

    def _take(self, n: int) -> Chunk:
        taken: list[tuple[pa.RecordBatch, np.ndarray]] = []
        need = n
        while need:
            batch, lines = self._parts[0]
            if batch.num_rows <= need:
                taken.append(self._parts.pop(0))
                need -= batch.num_rows
            else:
                taken.append((batch.slice(0, need), lines[:need]))
                self._parts[0] = (batch.slice(need), lines[need:])
                need = 0
        self._rows -= n
        self._bytes = sum(b.nbytes for b, _ in self._parts)
        if len(taken) == 1:
            return Chunk(*taken[0])
        batch = pa.concat_batches([b for b, _ in taken])
        return Chunk(batch, np.concatenate([ln for _, ln in taken]))


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _csv_error(exc: pa.ArrowInvalid, last_line: int | None) -> IngestError:
    """Map an Arrow CSV failure to a code without forwarding its message (it quotes row text)."""
    text = str(exc)
    details: dict[str, Any] = {}
    if last_line is not None:
        details["after_line"] = last_line
    if "UTF8" in text or "UTF-8" in text or "decode" in text.lower():
        return IngestError("wrong_encoding", "The file contains bytes that are not valid in its encoding.", details)
    if "straddling" in text or "block" in text:
        return IngestError("too_large", "A record is larger than the reader's block size.", details)
    return IngestError("unsupported_format", "The file could not be parsed as delimited text.", details)


def _as_strings(batch: pa.RecordBatch, names: list[str]) -> pa.RecordBatch:
    arrays = [col if col.type == pa.string() else pc.cast(col, pa.string()) for col in batch.columns]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _iter_jsonl(path: str, encoding: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)``; blank lines are skipped. Reads one bounded line at a time."""
    try:
        with open(path, encoding=encoding, errors="strict", newline="") as f:
            line_no = 0
            while True:
                line = f.readline(_JSONL_MAX_LINE)
                if not line:
                    return
                line_no += 1
                if not line.endswith("\n") and len(line) >= _JSONL_MAX_LINE:
                    raise IngestError("too_large", "A line is larger than allowed.", {"line": line_no})
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    # exc.msg names the syntax problem ("Expecting value"), never the content.
                    raise IngestError(
                        "jsonl_invalid",
                        "A line is not valid JSON.",
                        {"line": line_no, "reason": f"invalid JSON: {exc.msg} (column {exc.colno})"},
                    )
                if not isinstance(obj, dict):
                    raise IngestError(
                        "jsonl_invalid",
                        "Every line must be a JSON object.",
                        {"line": line_no, "reason": f"not a JSON object ({type(obj).__name__})"},
                    )
                yield line_no, obj
    except UnicodeDecodeError:
        raise IngestError("wrong_encoding", f"The file is not valid {encoding}.", {})


def _json_cell(value: Any) -> str | None:
    """A JSON value as the string the typed parsers read. Nested objects and arrays are kept as
    compact JSON text (they type as string/text) rather than rejected, so one nested field does not
    block an upload; the owner can mark such a column ``ignore``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return None if value == "" else value
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _logical_from_arrow(t: pa.DataType) -> str | None:
    """The logical type a Parquet column's Arrow type implies; None for strings (inferred)."""
    if pa.types.is_dictionary(t):
        return _logical_from_arrow(t.value_type)
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "datetime"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return None
    if pa.types.is_time(t) or pa.types.is_null(t):
        return None
    return "unsupported"


def _decode_dictionaries(batch: pa.RecordBatch) -> pa.RecordBatch:
    if not any(pa.types.is_dictionary(f.type) for f in batch.schema):
        return batch
    arrays = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _stringify(batch: pa.RecordBatch) -> pa.RecordBatch:
    arrays = []
    for col in batch.columns:
        if col.type == pa.string():
            arrays.append(col)
        elif pa.types.is_date(col.type):
            arrays.append(pc.strftime(pc.cast(col, pa.timestamp("s")), format="%Y-%m-%d"))
        elif pa.types.is_timestamp(col.type):
            arrays.append(pc.cast(col, pa.string()))
        else:
            arrays.append(pc.cast(col, pa.string()))
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)
