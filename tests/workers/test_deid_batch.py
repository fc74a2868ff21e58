"""The batch detection path (:func:`detect_many`) must give exactly what per-text :func:`detect`
gives: its RE2 prefilters are only allowed to skip finders that would have found nothing."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from workers.deid.detectors import (
    _FINDERS,
    KINDS,
    candidate_masks,
    detect,
    detect_many,
    detect_value,
    detect_values,
)

# Positives and near misses of every kind, plus the Unicode look-alikes that Python's re treats
# as digits, spaces or case variants (RE2 classes are ASCII: the prefilters must still admit them).
FRAGMENTS = [
    # email
    "john.smith@example.co.uk", "A.B+tag@sub.Example.ORG", "a@b.io", "c_d@e-f.com", "user@localhost",
    "@handle", "price 3@4.5", "x@y.c0m", "jo%e@ex-ample.org.", "m\u00fcller@example.de",
    "first_@example.com", "tag+@ex.org", "a.-@b.co",
    # phone
    "07700 900123", "07700900123", "020 7946 0958", "+44 20 7946 0958", "+44 (0)20 7946 0958",
    "+44 (0) (20) 7946 0958", "0161 496 0000", "(555) 234-5678", "555-234-5678", "555.234.5678",
    "+1 555 234 5678", "1-555-234-5678", "+33 1 42 68 53 00", "+91 98765 43210", "+81-3-1234-5678",
    "5552345678", "12.03.2024", "0\u0661\u0662\u0663 \u0664\u0665\u0666 \u0667\u0668\u0669\u0660",
    "+\u0664\u0664 7700 900123", "07700\u00a0900123",
    "+46 8 123 45", "+1 234 5678", "+49 (30) 1234 56",
    # national ids
    "123-45-6789", "123 45 6789", "123456789", "000-12-3456", "AB 12 34 56 C", "AB123456C",
    "QQ123456C", "GB123456A", "943 476 5919", "943-476-5919", "9434765919", "NHS 9434765919",
    "NHS no: 9434765919", "\u0661\u0662\u0663-45-6789", "\u0661\u0662\u0663456789", "ab123456c", "\u0669\u0664\u0663 \u0664\u0667\u0666 \u0665\u0669\u0661\u0669",
    # insurance
    "1EG4-TE5-MK73", "1EG4TE5MK73", "Member ID: XYZ12345", "Policy No. AB-99812", "Subscriber # 88A7731",
    "policy number: pending", "MEDICARE NUMBER 77123A", "Group Num 5512-AA", "Plan ID\u000b:\u000bQ12345",
    "POL\u0130CY \u0130D: 12345X", "health  plan id 99123", "claim #AB1234",
    # dates of birth
    "DOB: 14/03/1980", "D.O.B 1980-03-14", "date of birth 14 March 1980", "born on March 14, 1980",
    "birthdate: 3.4.85", "Birthday - 1st Jan. 1990", "b. 12-12-1912", "born Sept 3rd, 1971",
    "admitted 14/03/2020", "DOB\u2003\u0661\u0664/03/1980", "date of birth\u001c14/03/1980", "dob 14 mar 80",
    # postcodes
    "SW1A 1AA", "M1 1AE", "B33 8TH", "CR2 6XH", "DN55 1PT", "GIR 0AA", "EC1A1BB", "QA1 1AA",
    "Springfield, IL 62704", "zip 90210", "ZIP code: 10001-1234", "postal code 30301", "ref 12345",
    "IL\u00a062704", "Zip\u000b90210",
    # names
    "Dr Okafor", "Mrs. J. Patel", "Prof Anna Kowalczyk", "Anna Kowalczyk", "John P. Smith",
    "Smith, John", "Will Smith", "Will Patient", "May 2020", "Grace Hospital", "Anna Hospital",
    "Anne-Marie O'Brien", "Mary-Jane Watson", "saw Anna Smith today", "ANNA SMITH", "smith",
    "Dr\u00a0Okafor", "Anna\u2003Smith", "Anna\u001dSmith", "Dr\u001fOkafor", "Jean-anna Smith", "Thanks, Anna", "Patient seen by Ms Jones",
    # cards
    "4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "5500 0000 0000 0004",
    "3400 000000 00009", "1234 5678 9012 3456", "4111 1111 1111 1112", "4222222222222", "\u0664111111111111111",
    # iban
    "GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432", "DE89 3704 0044 0532 0130 00",
    "GB82 WEST 1234 5698 7654 32 NOTE", "FR14 2004 1010 0505 0001 3M02 606", "XX00 0000 0000 0000", "NO93 8601 1117 947", "NO9386011117947",
    # ip
    "192.168.0.1", "10.0.0.256", "1.2.3.4.5", "2001:db8::1", "fe80::1ff:fe23:4567:890a", "12:30:45",
    "::1", "v1.2.3.4",
    # filler
    "Stable, review in 3 months.", "Patient reports mild pain, no fever.", "no 3 months", "BP 120/80",
    "Temp 38.5\u00b0C", "ref\u00b2\u00b3", "x", "", "  ", "\t\n", "\u00e9t\u00e9", "\u4e2d\u6587\u75c5\u5386",
    "Seen in A&E.", "Will review in May.", "call", "Email", "NHS", "number", "#", ",", ":", "-", "/",
]  # fmt: skip
SEPARATORS = [" ", " ", " ", ", ", ". ", "; ", "\n", "\t", "", "-", "/", ":", "\u00a0", "\u2003", "\u000b", "\u001c"]


def _notes(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    notes: list[str] = []
    for _ in range(n):
        parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 6))]
        text = ""
        for p in parts:
            text += rng.choice(SEPARATORS) + p if text else p
        roll = rng.random()
        if roll < 0.1:
            text = text.upper()
        elif roll < 0.15:
            text = text.lower()
        elif roll < 0.25 and text:
            # a random character swapped in, to make near misses of the shapes
            i = rng.randrange(len(text))
            text = text[:i] + rng.choice("0123456789 .-()+@:#/ABCDEFabcdef\u0660\u00a0") + text[i + 1 :]
        notes.append(text)
    return notes


NOTES = _notes(4000, seed=7)
HINT_SETS = [(), ("national_id",), ("postcode",), ("person_name",), ("date_of_birth",), tuple(KINDS)]


@pytest.mark.parametrize("hints", HINT_SETS)
def test_detect_many_equals_detect(hints: tuple[str, ...]) -> None:
    fast = detect_many(pa.array(NOTES, pa.string()), hints=hints)
    assert fast == [detect(t, hints=hints) for t in NOTES]


@pytest.mark.parametrize("kinds", [["phone", "email"], ["person_name"], ["postcode", "iban"], ["ip_address"]])
def test_detect_many_kind_subsets(kinds: list[str]) -> None:
    assert detect_many(NOTES, kinds) == [detect(t, kinds) for t in NOTES]


@pytest.mark.parametrize("hints", HINT_SETS)
def test_prefilter_admits_every_finder_hit(hints: tuple[str, ...]) -> None:
    """Per kind, not only after overlap resolution: a finder hit never falls outside its mask."""
    masks = candidate_masks(pa.array(NOTES, pa.string()), hints=hints)
    for kind in KINDS:
        for i, text in enumerate(NOTES):
            if text and _FINDERS[kind](text, kind in hints):
                assert masks[kind][i], (kind, text)


def test_detect_many_nulls_empty_and_inputs() -> None:
    values = ["Call 07700 900123", None, "", "Dr Okafor"]
    expected = [detect(v) if v else [] for v in values]
    assert detect_many(values) == expected
    assert detect_many(pa.array(values, pa.large_string())) == expected
    assert detect_many(pa.chunked_array([values[:2], values[2:]], pa.string())) == expected
    assert detect_many(pa.array(values).dictionary_encode()) == expected
    assert detect_many([]) == []
    assert detect_many(values, []) == [[], [], [], []]
    with pytest.raises(ValueError, match="Unknown PII kind"):
        detect_many(values, ["nope"])
    with pytest.raises(TypeError):
        detect_many(pa.array([1, 2]))


def test_detect_values_equals_detect_value() -> None:
    short = [t for t in NOTES if len(t) < 30][:1500]
    short += ["ab123456c", "sw1a 1aa", "anna smith", "14/03/1980"]
    for hints in HINT_SETS:
        assert detect_values(short, hints) == [detect_value(v, hints) for v in short]
    assert detect_values([None, "x"], ()) == [[], []]
