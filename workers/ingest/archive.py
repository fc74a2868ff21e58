"""Image-classification uploads: a zip of images plus labels, checked without extracting anything.

A zip is attacker-controlled metadata: entry counts, sizes and names can all lie. So

* :func:`inspect_image_zip` validates the central directory *before* any member is read: member
  count (declared and actual), names (absolute, ``..``, backslashes, drive letters), symlinks,
  nested archives, declared sizes and ratios, encryption, compression method, and the labels.
* :func:`iter_zip_members` decompresses each member itself with :mod:`zlib`, in bounded steps,
  counting the bytes actually produced -- the declared sizes are never trusted -- and stops at the
  first byte over the member's declared size, ``max_member_bytes``, ``max_member_ratio`` or the
  archive's ``max_total_uncompressed``. Members are held in memory one at a time (at most
  ``max_member_bytes``) and never written to disk.

Labels come either from ``labels.csv`` at the root (columns ``file,label``) or from folders
(``<label>/<image>``, optionally under one common top folder). ``__MACOSX/`` and dot-files are
ignored; other non-image members are ignored with a warning.
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow as pa

from workers.ingest.errors import IngestError
from workers.ingest.limits import Limits
from workers.ingest.validate import ColumnReport, ValidationReport
from workers.schema import Column, DatasetSchema

LABELS_FILE = "labels.csv"
_ARCHIVE_EXTENSIONS = (".zip", ".gz", ".tgz", ".tar", ".7z", ".rar", ".bz2", ".xz", ".jar", ".zst", ".lz4")
_ARCHIVE_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"7z\xbc\xaf\x27\x1c", b"Rar!", b"BZh", b"\xfd7zXZ")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_CHUNK = 64 * 1024
_RATIO_GRACE = 64 * 1024  # tiny members (a solid-colour icon) may exceed the ratio harmlessly
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


@dataclass
class ZipManifest:
    """What :func:`inspect_image_zip` accepted: image members in archive order and their labels."""

    images: list[str]
    labels: dict[str, str]
    mode: str  # "labels_file" | "folders"
    declared_total: int
    ignored: int = 0
    warnings: list[str] = field(default_factory=list)
    infos: dict[str, zipfile.ZipInfo] = field(default_factory=dict, repr=False)


def _eocd_count(f: BinaryIO, size: int) -> int | None:
    """Entry count claimed by the end-of-central-directory record (None if not found / zip64)."""
    tail_len = min(size, 65535 + 22)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + 22 > len(tail):
        return None
    total = int(struct.unpack("<H", tail[pos + 10 : pos + 12])[0])
    return None if total == 0xFFFF else total


def _check_name(name: str) -> None:
    parts = name.split("/")
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or name.startswith("/")
        or _DRIVE_RE.match(name)
        or any(p in ("..",) for p in parts)
    ):
        raise IngestError("zip_path_traversal", "A member's path escapes the archive.", {"member": _safe_name(name)})


def _safe_name(name: str) -> str:
    """Member names are file names, not cell values; still bound them and drop control characters."""
    return "".join(ch if ch.isprintable() else "?" for ch in name)[:300]


def _is_ignored(name: str) -> bool:
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base.startswith(".")


def _open_zip(path: str, limits: Limits) -> zipfile.ZipFile:
    size = os.path.getsize(path)
    if size == 0:
        raise IngestError("empty_file", "The file is empty.")
    with open(path, "rb") as f:
        claimed = _eocd_count(f, size)
    if claimed is not None and claimed > limits.max_members:
        raise IngestError(
            "zip_too_many_members", "The archive has too many members.", {"members": claimed, "max": limits.max_members}
        )
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise IngestError("zip_invalid", "The file is not a readable zip archive.", {"reason": type(exc).__name__})


def inspect_image_zip(path: str, limits: Limits | None = None) -> ZipManifest:
    """Validate an image zip's directory and labels without decompressing any image.

    Raises ``zip_invalid``, ``zip_too_many_members``, ``zip_path_traversal``, ``zip_symlink``,
    ``zip_nested_archive``, ``zip_bomb`` (declared sizes), ``zip_no_labels`` or ``zip_bad_image``
    (a labels row naming a missing image).
    """
    limits = limits or Limits()
    with _open_zip(path, limits) as zf:
        infos = zf.infolist()  # parsed by walking the directory: a lying count is caught here
        if len(infos) > limits.max_members:
            raise IngestError(
                "zip_too_many_members",
                "The archive has too many members.",
                {"members": len(infos), "max": limits.max_members},
            )
        images: list[str] = []
        by_name: dict[str, zipfile.ZipInfo] = {}
        labels_info: zipfile.ZipInfo | None = None
        ignored = 0
        declared_total = 0
        for info in infos:
            name = info.filename
            _check_name(name)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise IngestError("zip_symlink", "The archive contains a symbolic link.", {"member": _safe_name(name)})
            if info.is_dir():
                continue
            lower = name.lower()
            if lower.endswith(_ARCHIVE_EXTENSIONS):
                raise IngestError(
                    "zip_nested_archive", "The archive contains another archive.", {"member": _safe_name(name)}
                )
            if info.flag_bits & 0x1:
                raise IngestError("zip_invalid", "Encrypted members are not supported.", {"member": _safe_name(name)})
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise IngestError(
                    "zip_invalid",
                    "Only stored or deflated members are supported.",
                    {"member": _safe_name(name), "method": info.compress_type},
                )
            if name in by_name:
                raise IngestError("zip_invalid", "The archive lists a member twice.", {"member": _safe_name(name)})
            declared_total += info.file_size
            _check_declared(info, limits, declared_total)
            if _is_ignored(name):
                ignored += 1
                continue
            if lower == LABELS_FILE:
                labels_info = info
                continue
            if os.path.splitext(lower)[1] not in limits.image_extensions:
                ignored += 1
                continue
            images.append(name)
            by_name[name] = info
        warnings = [f"{ignored} non-image members were ignored"] if ignored else []
        if labels_info is not None:
            labels = _read_labels_file(zf, labels_info, by_name, limits)
            unlabeled = len(images) - len(labels)
            if unlabeled:
                warnings.append(f"{unlabeled} images are not in {LABELS_FILE} and were ignored")
            images = [n for n in images if n in labels]
            mode = "labels_file"
        else:
            labels = _folder_labels(images)
            mode = "folders"
        if not images:
            raise IngestError("zip_no_labels", "The archive holds no labelled images.", {"mode": mode})
        return ZipManifest(
            images=images,
            labels=labels,
            mode=mode,
            declared_total=declared_total,
            ignored=ignored,
            warnings=warnings,
            infos={n: by_name[n] for n in images},
        )


def _check_declared(info: zipfile.ZipInfo, limits: Limits, declared_total: int) -> None:
    """Reject what the directory itself admits to; the streaming reader enforces the real bytes."""
    name = _safe_name(info.filename)
    if info.file_size > limits.max_member_bytes and not info.filename.lower().endswith(LABELS_FILE):
        raise IngestError("zip_bomb", "A member is larger than allowed.", {"member": name, "reason": "member_bytes"})
    if info.file_size > _RATIO_GRACE and info.file_size > limits.max_member_ratio * max(1, info.compress_size):
        raise IngestError(
            "zip_bomb", "A member's compression ratio is implausibly high.", {"member": name, "reason": "ratio"}
        )
    if declared_total > limits.max_total_uncompressed:
        raise IngestError("zip_bomb", "The archive expands to more than allowed.", {"reason": "total_bytes"})


def _read_labels_file(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, images: dict[str, zipfile.ZipInfo], limits: Limits
) -> dict[str, str]:
    data = _read_member(zf.fp, info, limits, budget=limits.max_labels_bytes, max_bytes=limits.max_labels_bytes)  # type: ignore[arg-type]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise IngestError("wrong_encoding", f"{LABELS_FILE} is not UTF-8.", {"member": LABELS_FILE})
    if "\x00" in text:  # labels become metadata (class counts) that PostgreSQL cannot store with a NUL
        raise IngestError("nul_character", f"{LABELS_FILE} may not contain NUL characters.", {"member": LABELS_FILE})
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    if "file" not in header or "label" not in header:
        raise IngestError(
            "zip_no_labels",
            f"{LABELS_FILE} needs the columns file and label.",
            {"member": LABELS_FILE, "columns": header},
        )
    fi, li = header.index("file"), header.index("label")
    labels: dict[str, str] = {}
    missing: list[int] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) <= max(fi, li):
            raise IngestError(
                "ragged_rows", f"A row of {LABELS_FILE} is incomplete.", {"member": LABELS_FILE, "line": line_no}
            )
        member = row[fi].strip().removeprefix("./")
        label = row[li].strip()
        if member not in images:
            missing.append(line_no)
            continue
        if label:
            labels[member] = label
    if missing:
        raise IngestError(
            "zip_bad_image",
            f"{LABELS_FILE} names images that are not in the archive.",
            {"member": LABELS_FILE, "count": len(missing), "first_lines": missing[: limits.max_row_errors_reported]},
        )
    return labels


def _folder_labels(images: list[str]) -> dict[str, str]:
    if not images:
        return {}
    parts = [n.split("/") for n in images]
    depth = {len(p) for p in parts}
    if depth == {3} and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]  # one common top folder (zip of a folder): skip it
        depth = {2}
    if depth != {2}:
        raise IngestError(
            "zip_no_labels",
            f"Put {LABELS_FILE} (file,label) at the root, or every image in a <label>/ folder.",
            {"depths": sorted(depth)},
        )
    return {name: p[0] for name, p in zip(images, parts, strict=True)}


def _read_member(
    fp: BinaryIO, info: zipfile.ZipInfo, limits: Limits, *, budget: int, max_bytes: int | None = None
) -> bytes:
    """Decompress one member ourselves, counting real output bytes; never trust the headers.

    ``budget`` is what is left of ``max_total_uncompressed``.
    """
    max_bytes = limits.max_member_bytes if max_bytes is None else max_bytes
    name = _safe_name(info.filename)
    fp.seek(info.header_offset)
    header = fp.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise IngestError("zip_invalid", "A member's local header is damaged.", {"member": name})
    fields = _LOCAL_HEADER.unpack(header)
    name_len, extra_len = fields[-2], fields[-1]
    fp.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
    remaining_in = info.compress_size
    out = bytearray()
    crc = 0

    def take(piece: bytes) -> None:
        nonlocal crc
        out.extend(piece)
        crc = zlib.crc32(piece, crc)
        n = len(out)
        reason = None
        if n > info.file_size:
            reason = "exceeds_declared_size"
        elif n > max_bytes:
            reason = "member_bytes"
        elif n > _RATIO_GRACE and n > limits.max_member_ratio * max(1, info.compress_size):
            reason = "ratio"
        elif n > budget:
            reason = "total_bytes"
        if reason:
            raise IngestError("zip_bomb", "A member expands to more than allowed.", {"member": name, "reason": reason})

    if info.compress_type == zipfile.ZIP_STORED:
        while remaining_in > 0:
            piece = fp.read(min(_CHUNK, remaining_in))
            if not piece:
                break
            remaining_in -= len(piece)
            take(piece)
    else:
        d = zlib.decompressobj(-15)
        while remaining_in > 0 and not d.eof:
            raw = fp.read(min(_CHUNK, remaining_in))
            if not raw:
                break
            remaining_in -= len(raw)
            try:
                piece = d.decompress(raw, _CHUNK)
                take(piece)
                while d.unconsumed_tail and not d.eof:
                    take(d.decompress(d.unconsumed_tail, _CHUNK))
            except zlib.error:
                raise IngestError("zip_invalid", "A member's compressed data is damaged.", {"member": name})
        if not d.eof:
            raise IngestError("zip_invalid", "A member's compressed data is truncated.", {"member": name})
    if len(out) != info.file_size or (crc & 0xFFFFFFFF) != info.CRC:
        raise IngestError("zip_invalid", "A member's size or checksum does not match.", {"member": name})
    return bytes(out)


def _check_image(name: str, data: bytes) -> None:
    head = data[:16]
    if head.startswith(_ARCHIVE_MAGICS):
        raise IngestError("zip_nested_archive", "The archive contains another archive.", {"member": _safe_name(name)})
    ok = (
        head.startswith(b"\x89PNG\r\n\x1a\n")
        or head.startswith(b"\xff\xd8\xff")
        or head.startswith((b"GIF87a", b"GIF89a"))
        or head.startswith(b"BM")
        or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")
    )
    if not ok:
        raise IngestError(
            "zip_bad_image", "A member is not a PNG, JPEG, GIF, BMP or WebP image.", {"member": _safe_name(name)}
        )
    from PIL import Image  # lazy: only image uploads need Pillow

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()  # structure check without decoding pixels (no decompression-bomb exposure)
    except Exception:
        raise IngestError("zip_bad_image", "A member is not a valid image.", {"member": _safe_name(name)})


def iter_zip_members(path: str, manifest: ZipManifest, limits: Limits | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member, bytes)`` for every image of the manifest, checking real decompressed sizes
    (``zip_bomb``), nested archives by magic (``zip_nested_archive``) and image validity
    (``zip_bad_image``). One member in memory at a time."""
    limits = limits or Limits()
    total = 0
    with open(path, "rb") as fp:
        for name in manifest.images:
            info = manifest.infos[name]
            data = _read_member(fp, info, limits, budget=limits.max_total_uncompressed - total)
            total += len(data)
            _check_image(name, data)
            yield name, data


def image_zip_table(
    path: str, limits: Limits | None = None, *, batch_rows: int = 65536
) -> tuple[DatasetSchema, ValidationReport, Iterator[pa.RecordBatch]]:
    """Validate an image zip completely (every member decompressed and checked, in memory) and
    return its table: ``image`` (member path, type image) and ``label`` (category), task
    image_classification. The batches are built from the manifest, so iterating them is cheap."""
    limits = limits or Limits()
    manifest = inspect_image_zip(path, limits)
    for _name, _data in iter_zip_members(path, manifest, limits):
        pass
    counts: dict[str, int] = {}
    for n in manifest.images:
        counts[manifest.labels[n]] = counts.get(manifest.labels[n], 0) + 1
    schema = DatasetSchema(
        columns=[Column("image", "image", role="feature", nullable=False), Column("label", "category", role="label")],
        label="label",
        task="image_classification",
    )
    schema.check()
    rows = len(manifest.images)
    lengths = [len(n) for n in manifest.images]
    report = ValidationReport(
        format="zip", encoding=None, delimiter=None, bytes=os.path.getsize(path), position="record"
    )
    report.rows = rows
    report.label, report.task = "label", "image_classification"
    report.columns = [
        ColumnReport(
            "image",
            "image",
            nulls=0,
            rows=rows,
            distinct=rows,
            stats={
                "min_length": min(lengths),
                "max_length": max(lengths),
                "mean_length": round(sum(lengths) / rows, 3),
            },
        ),
        ColumnReport("label", "category", nulls=0, rows=rows, distinct=len(counts), stats={}),
    ]
    report.class_balance = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: limits.max_classes])
    report.warnings.extend(manifest.warnings)
    if len(counts) < 2:
        report.warnings.append("the images have fewer than two classes")

    def batches() -> Iterator[pa.RecordBatch]:
        arrow = schema.arrow_schema()
        for start in range(0, rows, batch_rows):
            names = manifest.images[start : start + batch_rows]
            yield pa.RecordBatch.from_arrays(
                [pa.array(names, pa.string()), pa.array([manifest.labels[n] for n in names], pa.string())],
                schema=arrow,
            )

    return schema, report, batches()
