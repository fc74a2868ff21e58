"""Scan a dataset stream for PII and propose what to do with each column.

The scanner is an *observer*: ingest calls :meth:`PiiScanner.observe` with each raw all-string
batch it parses (or :meth:`PiiScanner.observe_typed` with canonical typed batches), so scanning
costs no extra read of the file.

Bounded cost on huge files: every row of the first ``sample_rows`` rows is scanned; after that a
deterministic systematic sample whose stride doubles each time another ``sample_rows`` rows have
been taken (stride 2, then 4, 8, ...). The rows scanned therefore grow with the logarithm of the
file size (about ``sample_rows * (1 + log2(N / sample_rows))``) while the tail of the file is
still looked at, and two scans of the same file give the same report.

Nothing the report contains is PII: examples are *masked* to their shape
(``j***@e******.com``, ``07*** ***123``, ``J*** S****``) and only span text is ever masked, never
the surrounding value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from workers.deid.detectors import (
    KINDS,
    Span,
    column_hints,
    detect_value,
    detect_values,
    is_uk_postcode,
    normalise_column_name,
)
from workers.schema import DatasetSchema

# Kinds that identify a person on their own: pseudonymise (keeps joins and de-duplication across
# files, reveals nothing without the tenant key).
DIRECT_KINDS = frozenset({"email", "phone", "national_id", "insurance_id", "credit_card", "iban", "ip_address"})
MOSTLY = 0.5  # share of non-null values that makes a column "one kind"
EXAMPLES_PER_KIND = 3

_QI_HINTS = re.compile(
    r"(?:^|_)(?:age|age_?years|sex|gender|ethnicity|ethnic_?group|race|marital_?status|religion|nationality|"
    r"occupation|zip3|county|city|town|region|state|country|year_?of_?birth|yob|birth_?year)(?:$|_)"
)
_ID_HINTS = re.compile(
    r"(?:^|_)(?:id|uuid|guid|mrn|record_?(?:id|no|number)|patient_?(?:id|no|number)|hospital_?(?:id|no|number)|"
    r"account_?(?:id|no|number)|customer_?(?:id|no|number)|client_?(?:id|no|number)|case_?(?:id|no|number))$"
)
_AGE_HINT = re.compile(r"(?:^|_)age(?:_?years)?$")


# ---------------------------------------------------------------------------------------------
# masking examples
# ---------------------------------------------------------------------------------------------
def mask_example(text: str, kind: str) -> str:
    """A shape-only rendering of a detected span that is not itself PII.

    Emails keep the first character of the local part and domain plus the TLD; phones keep the
    first two and last three digits (what a call-centre screen shows); names keep initials; all
    other kinds keep only separators, every letter and digit becomes ``*``.
    """
    if kind == "email" and "@" in text:
        local, _, domain = text.partition("@")
        labels = domain.split(".")
        tld = labels[-1]
        head = ".".join(lbl[:1] + "*" * max(len(lbl) - 1, 1) for lbl in labels[:-1])
        return f"{local[:1]}{'*' * max(len(local) - 1, 1)}@{head}.{tld}"
    if kind == "phone":
        ndigits = sum(c.isdigit() for c in text)
        out, seen = [], 0
        for c in text:
            if c.isdigit():
                seen += 1
                out.append(c if seen <= 2 or seen > ndigits - 3 else "*")
            else:
                out.append(c)
        return "".join(out)
    if kind == "person_name":
        return " ".join(tok[:1] + "*" * (len(tok) - 1) for tok in text.split())
    return re.sub(r"[^\W_]", "*", text)


# ---------------------------------------------------------------------------------------------
# per-column accumulation
# ---------------------------------------------------------------------------------------------
@dataclass
class _ColumnScan:
    name: str
    hints: frozenset[str]
    rows_scanned: int = 0
    values_scanned: int = 0
    values_with_pii: int = 0
    detections: dict[str, int] = field(default_factory=dict)  # spans per kind
    values_by_kind: dict[str, int] = field(default_factory=dict)  # values containing the kind
    whole_by_kind: dict[str, int] = field(default_factory=dict)  # values that *are* the kind
    examples: dict[str, list[str]] = field(default_factory=dict)
    uk_postcodes: int = 0
    total_chars: int = 0
    total_tokens: int = 0
    typed_dates: bool = False

    def add(self, value: str, spans: list[Span] | None = None) -> None:
        """Count one value; ``spans`` are its :func:`detect_value` spans when already known."""
        self.values_scanned += 1
        self.total_chars += len(value)
        self.total_tokens += len(value.split())
        if spans is None:
            spans = detect_value(value, self.hints)
        if not spans:
            return
        self.values_with_pii += 1
        stripped_len = len(value.strip())
        kinds_here: set[str] = set()
        for start, end, kind in spans:
            self.detections[kind] = self.detections.get(kind, 0) + 1
            kinds_here.add(kind)
            span_text = value[start:end]
            if end - start >= stripped_len:
                self.whole_by_kind[kind] = self.whole_by_kind.get(kind, 0) + 1
            if kind == "postcode" and is_uk_postcode(span_text):
                self.uk_postcodes += 1
            ex = self.examples.setdefault(kind, [])
            if len(ex) < EXAMPLES_PER_KIND:
                masked = mask_example(span_text, kind)
                if masked not in ex and masked != span_text:
                    ex.append(masked)
        for kind in kinds_here:
            self.values_by_kind[kind] = self.values_by_kind.get(kind, 0) + 1


@dataclass
class ColumnReport:
    name: str
    rows_scanned: int
    values_scanned: int
    detections: dict[str, int]
    match_ratio: float
    is_free_text: bool
    masked_examples: dict[str, list[str]]
    proposed: dict[str, Any]
    proposed_role: str
    dominant_kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_scanned": self.rows_scanned,
            "values_scanned": self.values_scanned,
            "detections": dict(sorted(self.detections.items())),
            "match_ratio": round(self.match_ratio, 4),
            "is_free_text": self.is_free_text,
            "masked_examples": {k: list(v) for k, v in sorted(self.masked_examples.items())},
            "dominant_kind": self.dominant_kind,
            "proposed": dict(self.proposed),
            "proposed_role": self.proposed_role,
        }


@dataclass
class PiiReport:
    rows_seen: int
    rows_scanned: int
    columns: dict[str, ColumnReport]

    @property
    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for c in self.columns.values():
            for k, n in c.detections.items():
                kinds[k] = kinds.get(k, 0) + n
        return {
            "rows_seen": self.rows_seen,
            "rows_scanned": self.rows_scanned,
            "columns_with_pii": sorted(n for n, c in self.columns.items() if c.detections),
            "detections": dict(sorted(kinds.items())),
            "identifiers": sorted(n for n, c in self.columns.items() if c.proposed_role == "identifier"),
            "quasi_identifiers": sorted(n for n, c in self.columns.items() if c.proposed_role == "quasi_identifier"),
            "free_text": sorted(n for n, c in self.columns.items() if c.is_free_text),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"columns": {n: c.to_dict() for n, c in self.columns.items()}, "summary": self.summary}


# ---------------------------------------------------------------------------------------------
# the scanner
# ---------------------------------------------------------------------------------------------
class PiiScanner:
    """Observer that scans sampled rows of a batch stream for PII (see module docstring)."""

    def __init__(self, sample_rows: int = 20_000) -> None:
        if sample_rows < 1:
            raise ValueError("sample_rows must be positive.")
        self.sample_rows = sample_rows
        self.rows_seen = 0
        self.rows_scanned = 0
        self._next = 0  # next global row index to scan
        self._stride = 1
        self._left_in_phase = sample_rows
        self._columns: dict[str, _ColumnScan] = {}
        self._typed_kinds: dict[str, str] = {}

    # --- sampling ------------------------------------------------------------------------
    def _pick(self, n: int) -> np.ndarray:
        """Indices (within a batch of ``n`` rows starting at ``rows_seen``) to scan."""
        start, end = self.rows_seen, self.rows_seen + n
        picks: list[np.ndarray] = []
        while self._next < end:
            count = min(self._left_in_phase, -(-(end - self._next) // self._stride))
            picks.append(np.arange(self._next, self._next + count * self._stride, self._stride) - start)
            self._next += count * self._stride
            self._left_in_phase -= count
            if self._left_in_phase == 0:
                self._stride *= 2
                self._left_in_phase = self.sample_rows
                self._next += self._stride - (self._stride // 2)
        self.rows_seen = end
        return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)

    def _column(self, name: str) -> _ColumnScan:
        col = self._columns.get(name)
        if col is None:
            col = self._columns[name] = _ColumnScan(name=name, hints=column_hints(name))
        return col

    # --- observers -----------------------------------------------------------------------
    def observe(self, first_line: int, batch: pa.RecordBatch) -> None:
        """Scan a raw batch whose columns are all strings (``first_line`` is unused: row
        positions are counted here so that sampling does not depend on header or blank lines)."""
        self.observe_typed(batch)

    def observe_typed(self, batch: pa.RecordBatch) -> None:
        """Scan a batch of any Arrow types: strings are scanned as text; dates and timestamps
        count as ``date_of_birth`` in a birth-hinted column; integers are scanned as their
        decimal string only where the name hints a kind (an ``nhs_number`` stored as int64)."""
        picks = self._pick(batch.num_rows)
        for name in batch.schema.names:
            self._column(name)
        if len(picks) == 0:
            return
        self.rows_scanned += len(picks)
        sample = batch.take(pa.array(picks, pa.int64()))
        for name, arr in zip(sample.schema.names, sample.columns, strict=True):
            col = self._column(name)
            col.rows_scanned += len(picks)
            t = arr.type
            if pa.types.is_date(t) or pa.types.is_timestamp(t):
                col.typed_dates = True
                n = len(arr) - arr.null_count
                col.values_scanned += n
                if "date_of_birth" in col.hints and n:
                    col.values_with_pii += n
                    for d in ("detections", "values_by_kind", "whole_by_kind"):
                        counter = getattr(col, d)
                        counter["date_of_birth"] = counter.get("date_of_birth", 0) + n
                    col.examples.setdefault("date_of_birth", ["****-**-**"])
                continue
            if pa.types.is_integer(t):
                if not col.hints:
                    col.values_scanned += len(arr) - arr.null_count
                    continue
                arr = arr.cast(pa.string())
            elif not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                col.values_scanned += len(arr) - arr.null_count
                continue
            values = [v for v in arr.to_pylist() if v is not None and v.strip() != ""]
            # one vectorised prefilter over the column, exact finders only where it may match
            for value, spans in zip(values, detect_values(values, col.hints), strict=True):
                col.add(value, spans)

    # --- result --------------------------------------------------------------------------
    def result(self, schema: DatasetSchema | None = None) -> PiiReport:
        """The report; ``schema`` (when known) sharpens free-text and role decisions."""
        columns: dict[str, ColumnReport] = {}
        for name, col in self._columns.items():
            ltype = schema.column(name).type if schema is not None and schema.has(name) else None
            columns[name] = _column_report(col, ltype, schema)
        return PiiReport(rows_seen=self.rows_seen, rows_scanned=self.rows_scanned, columns=columns)


def _column_report(col: _ColumnScan, ltype: str | None, schema: DatasetSchema | None) -> ColumnReport:
    n = col.values_scanned
    if ltype is not None:
        free_text = ltype == "text"
    else:
        free_text = n > 0 and col.total_chars / n >= 30 and col.total_tokens / n >= 5
    match_ratio = col.values_with_pii / n if n else 0.0
    dominant: str | None = None
    if n and col.values_by_kind and not free_text:
        kind, count = max(col.values_by_kind.items(), key=lambda kv: (kv[1], -KINDS.index(kv[0])))
        if count / n >= MOSTLY:
            dominant = kind
    proposed, role = _propose(col, ltype, free_text, dominant, schema)
    return ColumnReport(
        name=col.name,
        rows_scanned=col.rows_scanned,
        values_scanned=n,
        detections=dict(col.detections),
        match_ratio=match_ratio,
        is_free_text=free_text,
        masked_examples={k: list(v) for k, v in col.examples.items()},
        proposed=proposed,
        proposed_role=role,
        dominant_kind=dominant,
    )


def _proposal(action: str, reason: str, **params: Any) -> dict[str, Any]:
    return {"action": action, "params": params, "reason": reason}


def _propose(
    col: _ColumnScan, ltype: str | None, free_text: bool, dominant: str | None, schema: DatasetSchema | None
) -> tuple[dict[str, Any], str]:
    """Action and role for one column. The rules, in order:

    1. the label column is always kept (a warning is attached when PII was seen in it);
    2. a column that is mostly one *direct* kind (email, phone, national/insurance id, card,
       IBAN, IP) -> pseudonymise, role identifier (tokens keep joins, reveal nothing);
    3. mostly person names -> pseudonymise, role identifier (a name is a direct identifier; a
       token still lets records of one person be linked, which dropping would lose);
    4. mostly dates of birth -> generalise to year (date column) or drop (string column), role
       quasi-identifier;
    5. mostly postcodes -> generalise to the UK outward code / US ZIP3, role quasi-identifier;
    6. free text with any detection -> redact the kinds seen;
    7. a name that says "record identifier" (patient_id, mrn, ...) -> pseudonymise, identifier;
    8. age-like numbers -> generalise to 10-year bands, quasi-identifier; other demographic names
       (sex, gender, ethnicity, ...) -> keep, quasi-identifier;
    9. otherwise keep (with a note if a minority of values had PII).
    """
    norm = normalise_column_name(col.name)
    is_label = schema is not None and (
        schema.label == col.name or (schema.has(col.name) and schema.column(col.name).role == "label")
    )
    if is_label:
        note = "The label column is kept."
        if col.detections:
            note += f" PII was detected in it ({', '.join(sorted(col.detections))}); review the data."
        return _proposal("keep", note), "label"
    if dominant in DIRECT_KINDS:
        return _proposal(
            "pseudonymise", f"Mostly {dominant} values: replaced by keyed tokens so joins still work."
        ), "identifier"
    if dominant == "person_name":
        return _proposal(
            "pseudonymise", "Mostly personal names: replaced by keyed tokens (records stay linkable)."
        ), "identifier"
    if dominant == "date_of_birth":
        if ltype in ("date", "datetime") or (ltype is None and col.typed_dates):
            return _proposal("generalise", "Dates of birth: generalised to the year.", to="year"), "quasi_identifier"
        return _proposal(
            "drop", "Dates of birth stored as text cannot be generalised; type the column as date to keep the year."
        ), "quasi_identifier"
    if dominant == "postcode":
        where = "UK outward code" if col.uk_postcodes * 2 >= col.values_by_kind.get("postcode", 0) else "ZIP3"
        if ltype in (None, "string", "category"):
            return _proposal(
                "generalise", f"Postcodes: generalised to the {where}.", prefix="outward"
            ), "quasi_identifier"
        return _proposal("drop", "Postcodes in a column that cannot be generalised."), "quasi_identifier"
    if free_text and col.detections and ltype in (None, "string", "category", "text"):
        kinds = sorted(col.detections)
        return _proposal("redact", f"Free text containing {', '.join(kinds)}: spans replaced.", kinds=kinds), "feature"
    if _ID_HINTS.search(norm) and ltype not in ("float", "boolean", "date", "datetime"):
        return _proposal(
            "pseudonymise", "The column name suggests a record identifier: replaced by keyed tokens."
        ), "identifier"
    if _AGE_HINT.search(norm) and ltype in (None, "integer", "float"):
        if ltype is None:
            return _proposal("keep", "Age: a quasi-identifier; type it as a number to band it."), "quasi_identifier"
        return _proposal(
            "generalise", "Age: banded to 10 years to make k-anonymity achievable.", bin_width=10
        ), "quasi_identifier"
    if _QI_HINTS.search(norm):
        return _proposal("keep", "Demographic attribute: kept as a quasi-identifier."), "quasi_identifier"
    if col.detections:
        seen = ", ".join(sorted(col.detections))
        return _proposal("keep", f"A minority of values look like {seen}; review before publishing."), "feature"
    return _proposal("keep", "No PII detected."), "feature"
