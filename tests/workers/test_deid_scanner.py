"""PII scanner: proposals on a generated clinical table, masking, sampling, end to end."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from workers.deid.detectors import nhs_checksum_ok
from workers.deid.policy import propose_policy
from workers.deid.scanner import PiiScanner, mask_example
from workers.deid.transform import deidentify
from workers.schema import Column, DatasetSchema

FIRST = ["Anna", "John", "Priya", "Wei", "Fatima", "Oliver", "Sofia", "Mohammed", "Emily", "Hiroshi", "Chidi", "Laura"]
LAST = ["Smith", "Patel", "Nguyen", "Kowalski", "Okafor", "Jones", "Garcia", "Tanaka", "Khan", "Murphy", "Rossi"]
OUTWARD = ["SW1A", "M1", "B33", "CR2", "LS6", "EH1", "G12", "CF10", "BS8", "NE1", "OX4", "EC1A"]
INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
DIAGNOSES = ["asthma", "diabetes type 2", "hypertension", "copd", "migraine"]

CLINICAL_SCHEMA = DatasetSchema(
    columns=[
        Column("patient_id", "string"),
        Column("name", "string"),
        Column("email", "string"),
        Column("phone", "string"),
        Column("nhs_number", "string"),
        Column("dob", "date"),
        Column("postcode", "string"),
        Column("age", "integer"),
        Column("sex", "category"),
        Column("diagnosis", "category", "label"),
        Column("notes", "text"),
    ],
    label="diagnosis",
    task="multiclass_classification",
)


def nhs_number(rng: random.Random) -> str:
    while True:
        digits = [rng.randrange(10) for _ in range(9)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        check = 0 if check == 11 else check
        if check != 10:
            s = "".join(map(str, digits)) + str(check)
            if nhs_checksum_ok(s):
                return f"{s[:3]} {s[3:6]} {s[6:]}" if rng.random() < 0.5 else s


def clinical_rows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """A deterministic clinical-notes table with PII where real uploads have it."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        phone = f"07700 9{rng.randrange(100000):05d}"
        email = f"{first.lower()}.{last.lower()}{i}@example.org"
        dob = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(365 * 80))
        postcode = f"{rng.choice(OUTWARD)} {rng.randrange(10)}{rng.choice(INWARD_LETTERS)}{rng.choice(INWARD_LETTERS)}"
        kind = i % 4
        if kind == 0:
            notes = f"Seen with {first} {last}. Contact {email} re results."
        elif kind == 1:
            notes = f"Dr {rng.choice(LAST)} reviewed; patient to call {phone} if symptoms worsen."
        elif kind == 2:
            notes = "Stable on current medication, review in May at the clinic."
        else:
            notes = f"Spoke to Mrs {last} by telephone, advised rest and fluids for a week."
        rows.append(
            {
                "patient_id": f"P{i:06d}",
                "name": f"{first} {last}",
                "email": email,
                "phone": phone,
                "nhs_number": nhs_number(rng),
                "dob": dob,
                "postcode": postcode,
                "age": 2024 - dob.year,
                "sex": rng.choice(["F", "M"]),
                "diagnosis": rng.choice(DIAGNOSES),
                "notes": notes if rng.random() < 0.95 else None,
            }
        )
    return rows


def typed_batches(rows: list[dict[str, Any]], size: int = 250) -> Iterator[pa.RecordBatch]:
    arrow_schema = CLINICAL_SCHEMA.arrow_schema()
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        yield pa.RecordBatch.from_pylist(chunk, schema=arrow_schema)


def string_batches(rows: list[dict[str, Any]], size: int = 250) -> Iterator[pa.RecordBatch]:
    """What the ingest package produces before typing: every column a string."""
    for b in typed_batches(rows, size):
        yield pa.RecordBatch.from_arrays([c.cast(pa.string()) for c in b.columns], names=b.schema.names)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return clinical_rows(2000)


@pytest.fixture(scope="module")
def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    scanner = PiiScanner()
    for b in typed_batches(rows):
        scanner.observe_typed(b)
    return scanner.result(CLINICAL_SCHEMA).to_dict()


EXPECTED = {
    # column: (action, params subset, role, dominant kind)
    "patient_id": ("pseudonymise", {}, "identifier", None),
    "name": ("pseudonymise", {}, "identifier", "person_name"),
    "email": ("pseudonymise", {}, "identifier", "email"),
    "phone": ("pseudonymise", {}, "identifier", "phone"),
    "nhs_number": ("pseudonymise", {}, "identifier", "national_id"),
    "dob": ("generalise", {"to": "year"}, "quasi_identifier", "date_of_birth"),
    "postcode": ("generalise", {"prefix": "outward"}, "quasi_identifier", "postcode"),
    "age": ("generalise", {"bin_width": 10}, "quasi_identifier", None),
    "sex": ("keep", {}, "quasi_identifier", None),
    "diagnosis": ("keep", {}, "label", None),
}


@pytest.mark.parametrize("column", sorted(EXPECTED))
def test_clinical_proposals(report: dict[str, Any], column: str) -> None:
    action, params, role, dominant = EXPECTED[column]
    col = report["columns"][column]
    assert col["proposed"]["action"] == action, col
    assert col["proposed"]["params"] == params
    assert col["proposed_role"] == role
    assert col["dominant_kind"] == dominant
    assert col["proposed"]["reason"]


def test_clinical_notes_are_redacted(report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    notes = report["columns"]["notes"]
    assert notes["is_free_text"] is True
    assert notes["proposed"]["action"] == "redact"
    assert {"email", "phone", "person_name"} <= set(notes["proposed"]["params"]["kinds"])
    assert notes["detections"]["email"] == sum(1 for r in rows if r["notes"] and "@" in r["notes"])
    # "review in May at the clinic" must not be a name
    assert notes["detections"]["person_name"] < 2000 * 3 / 4


def test_report_counts_and_summary(report: dict[str, Any]) -> None:
    email = report["columns"]["email"]
    assert email["rows_scanned"] == 2000
    assert email["values_scanned"] == 2000
    assert email["detections"] == {"email": 2000}
    assert email["match_ratio"] == 1.0
    assert email["is_free_text"] is False
    assert report["columns"]["diagnosis"]["detections"] == {}
    summary = report["summary"]
    assert summary["rows_seen"] == summary["rows_scanned"] == 2000
    assert summary["identifiers"] == ["email", "name", "nhs_number", "patient_id", "phone"]
    assert summary["quasi_identifiers"] == ["age", "dob", "postcode", "sex"]
    assert summary["free_text"] == ["notes"]


def test_masked_examples_contain_no_raw_values(report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    text = json.dumps(report)
    for row in rows:
        for col in ("name", "email", "phone", "nhs_number", "postcode", "notes"):
            value = row[col]
            if value:
                assert value not in text, (col, value)
        assert row["dob"].isoformat() not in text
        assert row["email"].split("@")[0] not in text
    examples = report["columns"]["email"]["masked_examples"]["email"]
    assert 1 <= len(examples) <= 3
    assert all("*" in e and e.endswith(".org") for e in examples)
    for col in report["columns"].values():
        assert all(len(v) <= 3 for v in col["masked_examples"].values())


@pytest.mark.parametrize(
    ("text", "kind", "masked"),
    [
        ("john@example.com", "email", "j***@e******.com"),
        ("07700 900123", "phone", "07*** ***123"),
        ("John Smith", "person_name", "J*** S****"),
        ("943 476 5919", "national_id", "*** *** ****"),
        ("SW1A 1AA", "postcode", "**** ***"),
        ("1980-03-14", "date_of_birth", "****-**-**"),
    ],
)
def test_mask_example(text: str, kind: str, masked: str) -> None:
    assert mask_example(text, kind) == masked


def test_string_batches_give_the_same_proposals(rows: list[dict[str, Any]], report: dict[str, Any]) -> None:
    """The ingest observer path (all-string batches, no schema) reaches the same decisions,
    except that a dob stored as text cannot be generalised until it is typed."""
    scanner = PiiScanner()
    for i, b in enumerate(string_batches(rows)):
        scanner.observe(2 + i * 250, b)
    raw = scanner.result().to_dict()
    for column, (action, _, role, dominant) in EXPECTED.items():
        col = raw["columns"][column]
        if column == "dob":
            assert col["proposed"]["action"] == "drop"
            assert col["dominant_kind"] == "date_of_birth"
        elif column == "diagnosis":
            assert col["proposed"]["action"] == "keep"
        elif column == "age":
            assert col["proposed_role"] == "quasi_identifier"
        else:
            assert col["proposed"]["action"] == action, (column, col)
            assert col["proposed_role"] == role
            assert col["dominant_kind"] == dominant
    assert raw["columns"]["notes"]["is_free_text"] is True


def test_sampling_is_bounded_and_independent_of_batch_size() -> None:
    rows = clinical_rows(3000, seed=3)
    reports = []
    for size in (128, 1000, 3000):
        scanner = PiiScanner(sample_rows=200)
        for b in typed_batches(rows, size):
            scanner.observe_typed(b)
        reports.append(scanner.result(CLINICAL_SCHEMA).to_dict())
    assert reports[0] == reports[1] == reports[2]
    summary = reports[0]["summary"]
    assert summary["rows_seen"] == 3000
    # every row of the first 200, then 200 rows at stride 2 (rows 201..599), 4 (603..1399) and 8
    # (1407..2999): the stride doubles so the cost grows with log(rows), and the tail is still seen.
    assert summary["rows_scanned"] == 800


def test_sampling_rows_picked() -> None:
    scanner = PiiScanner(sample_rows=3)
    picked = [int(i) for i in scanner._pick(30)]
    assert picked == [0, 1, 2, 4, 6, 8, 12, 16, 20, 28]
    assert scanner.rows_seen == 30


def test_end_to_end_scan_propose_deidentify(rows: list[dict[str, Any]], report: dict[str, Any]) -> None:
    scanner = PiiScanner()
    for b in typed_batches(rows):
        scanner.observe_typed(b)
    policy = propose_policy(scanner.result(CLINICAL_SCHEMA), CLINICAL_SCHEMA)
    policy.check(CLINICAL_SCHEMA)
    assert policy.k == 5
    assert policy.quasi_identifiers == ["dob", "postcode", "age", "sex"]
    out_schema, batches, stats = deidentify(lambda: typed_batches(rows), CLINICAL_SCHEMA, policy, b"s" * 32)
    table = pa.Table.from_batches(list(batches), schema=out_schema.arrow_schema())
    out_schema.check()
    assert out_schema.column("dob").type == "integer"
    assert out_schema.column("patient_id").role == "identifier"
    text = json.dumps(table.to_pylist(), default=str)
    for row in rows:
        for col in ("name", "email", "phone", "nhs_number", "postcode"):
            assert row[col] not in text
    rep = stats.to_dict()["k_anonymity"]
    assert rep["k_achieved"] is None or rep["k_achieved"] >= 5
    assert table.num_rows == rep["rows_in"] - rep["rows_suppressed"]
