"""Format, encoding and delimiter detection for uploaded files.

Uploads arrive with whatever name and encoding the owner's export tool produced, so nothing here
trusts the extension first: magic bytes decide binary formats, a bounded sample decides text, and
the extension is only a tie-breaker. Every function reads a bounded prefix of the file, never all
of it, so sniffing a multi-GB file costs the same as a small one.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from collections import Counter

from workers.ingest.errors import IngestError
from workers.ingest.limits import Limits

FORMATS: tuple[str, ...] = ("csv", "tsv", "parquet", "jsonl", "zip")
DELIMITERS = ",;\t|"

# Encodings charset-normalizer may propose; anything else (e.g. a CJK code page "detected" in a
# binary blob) is more likely a wrong guess than a real medical-records export.
# cp1250 is deliberately absent: on short French/German samples it "wins" over cp1252 and turns è
# into č. Central-European single-byte exports must be re-exported as UTF-8.
SANE_ENCODINGS: tuple[str, ...] = ("cp1252", "latin_1", "iso8859_15", "utf_16", "utf_16_le", "utf_16_be")
_CODEC_NAMES = {
    "cp1252": "cp1252",
    "windows-1252": "cp1252",
    "latin_1": "latin-1",
    "latin-1": "latin-1",
    "iso8859_1": "latin-1",
    "iso8859_15": "iso8859-15",
    "cp1250": "cp1250",
    "utf_16": "utf-16",
    "utf_16_le": "utf-16-le",
    "utf_16_be": "utf-16-be",
}
_ENCODING_CONFIDENCE = 0.6  # charset-normalizer "chaos" ceiling (repetitive real exports score ~0.3)
_CONTROL_RATIO = 0.01
_EXT_FORMATS = {
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".zip": "zip",
}
_ARCHIVE_MAGICS = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c", b"Rar!")


def _read_prefix(path: str, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _bom_encoding(sample: bytes) -> str | None:
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def _bomless_utf16(sample: bytes) -> str | None:
    """ASCII-heavy UTF-16 without a BOM: one byte of every pair is NUL, the other almost never."""
    s = sample[: 1 << 16]
    if len(s) < 8:
        return None
    even, odd = s[0::2], s[1::2]
    z_even, z_odd = even.count(0) / len(even), odd.count(0) / len(odd)
    if z_odd > 0.9 and z_even < 0.05:
        return "utf-16-le"
    if z_even > 0.9 and z_odd < 0.05:
        return "utf-16-be"
    return None


def _looks_binary(sample: bytes) -> bool:
    if b"\x00" in sample:
        return True
    controls = sum(sample.count(bytes([c])) for c in range(32) if c not in (9, 10, 12, 13))
    return controls > _CONTROL_RATIO * max(1, len(sample))


def _utf8_ok(sample: bytes, truncated: bool) -> tuple[bool, bool]:
    """(valid UTF-8, has a multibyte char). A truncated sample may end mid-character: the
    incremental decoder with ``final=False`` keeps an incomplete tail instead of failing on it."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        text = decoder.decode(sample, final=not truncated)
    except UnicodeDecodeError:
        return False, _has_valid_multibyte(sample)
    return True, not text.isascii()


def _has_valid_multibyte(sample: bytes) -> bool:
    """Whether the sample holds at least one well-formed multibyte UTF-8 sequence (a sign the file
    *is* UTF-8 and the invalid bytes are corruption, not another encoding)."""
    text = sample.decode("utf-8", errors="replace")
    return any(ord(ch) > 127 and ch != "\ufffd" for ch in text)


def detect_encoding(path: str, limits: Limits | None = None) -> str:
    """Return a Python codec name for a text file, or raise ``empty_file``, ``binary_content`` or
    ``wrong_encoding``.

    Order: BOM; BOM-less UTF-16; binary check; strict UTF-8 over the first ``sniff_bytes`` (8 MiB);
    charset-normalizer restricted to :data:`SANE_ENCODINGS`.

    Deliberate choice for invalid bytes inside an otherwise UTF-8 file: when the sample contains
    both well-formed multibyte UTF-8 and invalid sequences, the file mixes encodings (or is
    corrupt) and any single-byte guess would turn its valid UTF-8 into mojibake, so we raise
    ``wrong_encoding``. A file that is pure ASCII apart from high bytes is a legitimate single-byte
    file (cp1252 with accents looks exactly like that) and goes to charset-normalizer. Invalid bytes
    beyond the sample surface later, when the CSV reader decodes them, also as ``wrong_encoding``.
    """
    limits = limits or Limits()
    size = os.path.getsize(path)
    if size == 0:
        raise IngestError("empty_file", "The file is empty.")
    sample = _read_prefix(path, limits.sniff_bytes)
    truncated = size > len(sample)
    bom = _bom_encoding(sample)
    if bom is not None:
        return bom
    utf16 = _bomless_utf16(sample)
    if utf16 is not None:
        return utf16
    if _looks_binary(sample):
        raise IngestError("binary_content", "The file holds binary data, not text.", {"sampled_bytes": len(sample)})
    ok, multibyte = _utf8_ok(sample, truncated)
    if ok:
        return "utf-8"
    if multibyte:
        raise IngestError(
            "wrong_encoding",
            "The file mixes valid UTF-8 with invalid byte sequences; re-export it as UTF-8.",
            {"reason": "mixed_or_corrupt_utf8"},
        )
    from charset_normalizer import from_bytes  # imported lazily: only non-UTF-8 files pay for it

    head = sample[: 1 << 20]
    best = from_bytes(head, cp_isolation=list(SANE_ENCODINGS), threshold=_ENCODING_CONFIDENCE).best()
    name = _CODEC_NAMES.get(best.encoding, best.encoding) if best is not None else None
    if name in (None, "latin-1", "iso8859-15") and _decodes(head, "cp1252"):
        # cp1252 is what Windows exports call "latin-1"; it differs only in 0x80-0x9F, which in
        # latin-1 are control characters nobody means. Also the fallback when detection is unsure.
        name = "cp1252"
    if name is None:
        raise IngestError(
            "wrong_encoding", "The file's text encoding could not be recognised; re-export it as UTF-8.", {}
        )
    return name


def _decodes(sample: bytes, encoding: str) -> bool:
    try:
        sample.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def sniff_delimiter(sample_text: str) -> str:
    """Pick the delimiter among ``, ; TAB |``.

    csv.Sniffer is tried first (it understands quoting) but only trusted when the first lines then
    parse to a consistent field count above one; otherwise each candidate is scored by how
    consistently it splits the lines (most common field count, its frequency, then its width).
    Comma is the fallback for single-column files.
    """
    lines = sample_text.splitlines(keepends=True)
    if len(lines) > 1 and not sample_text.endswith(("\n", "\r")):
        lines = lines[:-1]  # drop a partial last line cut by the sample boundary
    lines = lines[:100]
    text = "".join(lines)
    if not text.strip():
        return ","

    def score(delim: str) -> tuple[float, int]:
        try:
            counts = [len(row) for row in csv.reader(io.StringIO(text), delimiter=delim) if row]
        except csv.Error:
            return (0.0, 0)
        if not counts:
            return (0.0, 0)
        width, freq = Counter(counts).most_common(1)[0]
        if width <= 1:
            return (0.0, 0)
        return (freq / len(counts), width)

    try:
        sniffed = csv.Sniffer().sniff(text, delimiters=DELIMITERS).delimiter
    except csv.Error:
        sniffed = None
    if sniffed is not None and score(sniffed)[0] >= 0.9:
        return sniffed
    best = max(DELIMITERS, key=score)
    return best if score(best)[0] > 0 else ","


def _decode_sample(sample: bytes) -> str:
    bom = _bom_encoding(sample) or _bomless_utf16(sample)
    if bom is not None:
        return sample.decode(bom, errors="replace")
    return sample.decode("utf-8", errors="replace")


def detect_format(path: str, filename: str | None = None) -> str:
    """Return one of :data:`FORMATS`: magic bytes first, then content, then the extension.

    Raises ``empty_file`` for an empty file and ``unsupported_format`` for other archives
    (gzip, bzip2, xz, 7z, rar) -- compressed tabular uploads are not accepted.
    """
    if os.path.getsize(path) == 0:
        raise IngestError("empty_file", "The file is empty.")
    head = _read_prefix(path, 1 << 16)
    ext = os.path.splitext(filename or path)[1].lower()
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(_ARCHIVE_MAGICS):
        raise IngestError("unsupported_format", "Compressed archives other than zip are not accepted.", {})
    binary = _bomless_utf16(head) is None and _bom_encoding(head) is None and _looks_binary(head)
    if binary:
        # Binary content is only plausible for a binary format; trust the extension for those so the
        # format-specific reader reports the precise error (parquet_unreadable, zip_invalid).
        if _EXT_FORMATS.get(ext) in ("parquet", "zip"):
            return _EXT_FORMATS[ext]
        raise IngestError("binary_content", "The file holds binary data, not a supported format.", {})
    text = _decode_sample(head)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if first.startswith("{"):
        try:
            if isinstance(json.loads(first), dict):
                return "jsonl"
        except ValueError:
            if ext in (".jsonl", ".ndjson", ".json"):
                return "jsonl"  # let the JSONL reader report the exact line
    delim = sniff_delimiter(text)
    if delim == "\t":
        return "tsv"
    if delim in ",;|" and any(delim in ln for ln in text.splitlines()[:5]):
        return "csv"
    return {"tsv": "tsv", "jsonl": "jsonl"}.get(_EXT_FORMATS.get(ext, "csv"), "csv")
