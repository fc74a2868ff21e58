"""PII detectors: true positives and the tricky negatives that keep precision high."""

from __future__ import annotations

import itertools

import pytest

from workers.deid.detectors import (
    KINDS,
    column_hints,
    detect,
    detect_value,
    find_credit_cards,
    find_dates_of_birth,
    find_emails,
    find_ibans,
    find_insurance_ids,
    find_ip_addresses,
    find_national_ids,
    find_person_names,
    find_postcodes,
    first_names,
    iban_ok,
    luhn_ok,
    nhs_checksum_ok,
    surnames,
)


def texts(text: str, spans: list[tuple[int, int, str]]) -> list[tuple[str, str]]:
    return [(text[s:e], k) for s, e, k in spans]


def found(text: str, kind: str | None = None) -> list[str]:
    return [text[s:e] for s, e, k in detect(text) if kind is None or k == kind]


# --- email -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Contact john.smith@example.co.uk today", ["john.smith@example.co.uk"]),
        ("mail A.B+tag@sub.Example.ORG.", ["A.B+tag@sub.Example.ORG"]),
        ("two: a@b.io, c_d@e-f.com", ["a@b.io", "c_d@e-f.com"]),
    ],
)
def test_email_positives(text: str, expected: list[str]) -> None:
    assert [text[s:e] for s, e, _ in find_emails(text)] == expected


@pytest.mark.parametrize("text", ["user@localhost", "@handle", "a@b", "price 3@4.5", "x@y.c0m"])
def test_email_negatives(text: str) -> None:
    assert find_emails(text) == []


# --- phone -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "phone",
    [
        "07700 900123",
        "07700900123",
        "020 7946 0958",
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+44 7700 900123",
        "0161 496 0000",
        "(555) 234-5678",
        "555-234-5678",
        "555.234.5678",
        "+1 555 234 5678",
        "1-555-234-5678",
        "+33 1 42 68 53 00",
        "+91 98765 43210",
        "+81-3-1234-5678",
    ],
)
def test_phone_positives(phone: str) -> None:
    text = f"Call {phone} after 5pm."
    assert found(text, "phone") == [phone]


@pytest.mark.parametrize(
    "text",
    [
        "ref 4829103746 logged",  # bare 10 digits: an id, not a phone
        "dose 12 mg on 2020-01-15",  # dates and small numbers
        "on 01/02/2020 and 01-02-2020",
        "code 123456",
        "version 1.2.3",
        "(123) 456-7890",  # NANP area codes never start with 1
    ],
)
def test_phone_negatives(text: str) -> None:
    assert found(text, "phone") == []


# --- national ids ----------------------------------------------------------------------------
def test_ssn_valid_and_invalid_ranges() -> None:
    text = "SSN 123-45-6789 ok; 000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000 bad"
    assert texts(text, find_national_ids(text)) == [("123-45-6789", "national_id")]


def test_ssn_bare_only_when_hinted() -> None:
    assert find_national_ids("123456789") == []
    assert texts("123456789", find_national_ids("123456789", hinted=True)) == [("123456789", "national_id")]
    assert detect_value("123456789", column_hints("ssn")) == [(0, 9, "national_id")]


@pytest.mark.parametrize("nino", ["AB123456C", "AB 12 34 56 C", "JG103759A", "CE123456D"])
def test_nino_positives(nino: str) -> None:
    assert found(f"NI number {nino}.", "national_id") == [nino]


@pytest.mark.parametrize(
    "nino",
    [
        "DA123456C",  # D never a first letter
        "AO123456C",  # O never a second letter
        "GB123456A",  # GB prefix not allocated
        "ZZ123456A",  # ZZ not allocated
        "NK123456A",
        "AB123456E",  # suffix must be A-D
        "QQ123456C",
    ],
)
def test_nino_negatives(nino: str) -> None:
    assert find_national_ids(nino) == []


def test_nhs_checksum() -> None:
    assert nhs_checksum_ok("9434765919")
    assert not nhs_checksum_ok("9434765918")  # wrong check digit
    assert not nhs_checksum_ok("1111111111")  # repeated digit: arithmetic passes, never issued
    assert not nhs_checksum_ok("123")


def test_nhs_spaced_and_bare() -> None:
    assert found("NHS number 943 476 5919 on file", "national_id") == ["943 476 5919"]
    assert found("patient 943 476 5919", "national_id") == ["943 476 5919"]
    assert found("NHS no: 9434765919", "national_id") == ["9434765919"]
    # bare with no NHS context: ~1 in 11 random numbers pass the checksum, so not flagged.
    assert found("order 9434765919 shipped", "national_id") == []
    assert detect_value("9434765919", column_hints("nhs_number")) == [(0, 10, "national_id")]


def test_nhs_checksum_failures_and_random_numbers() -> None:
    assert found("NHS 943 476 5918", "national_id") == []
    assert found("NHS number 4829103746", "national_id") == []  # checksum fails
    assert detect_value("4829103746", column_hints("nhs_number")) == []


# --- insurance ids ---------------------------------------------------------------------------
@pytest.mark.parametrize("mbi", ["1EG4-TE5-MK73", "1EG4TE5MK73", "9AA0-A00-AA00"])
def test_mbi_positives(mbi: str) -> None:
    assert found(f"Medicare {mbi}", "insurance_id") == [mbi]


@pytest.mark.parametrize(
    "text",
    [
        "0EG4-TE5-MK73",  # first char 1-9
        "1SG4-TE5-MK73",  # S excluded
        "1EG4-TE5-MK7",  # short
        "1EG4-TE5-MK73X",
    ],
)
def test_mbi_negatives(text: str) -> None:
    assert find_insurance_ids(text) == []


def test_labelled_insurance_ids() -> None:
    text = "Member ID: XYZ12345. Policy No. AB-99812; subscriber # 88A7731"
    assert [t for t, _ in texts(text, find_insurance_ids(text))] == ["XYZ12345", "AB-99812", "88A7731"]
    assert find_insurance_ids("Policy number: pending review") == []
    assert find_insurance_ids("Member ID: ABCDEFG") == []  # no digit: low confidence


# --- dates of birth --------------------------------------------------------------------------
def test_dob_with_context() -> None:
    text = "DOB: 14/03/1980. Born on 3 March 1975; date of birth March 14, 1980; D.O.B 1980-03-14"
    assert [t for t, _ in texts(text, find_dates_of_birth(text))] == [
        "14/03/1980",
        "3 March 1975",
        "March 14, 1980",
        "1980-03-14",
    ]


def test_dates_without_birth_context_are_not_dob() -> None:
    assert found("Admitted 2020-01-15, discharged 20/01/2020", "date_of_birth") == []
    assert found("Review in May 2020.") == []


def test_dob_hinted_column_takes_any_date() -> None:
    hints = column_hints("date_of_birth")
    assert detect_value("1980-03-14", hints) == [(0, 10, "date_of_birth")]
    assert detect_value("14/03/1980", hints) == [(0, 10, "date_of_birth")]
    assert detect_value("unknown", hints) == []


# --- postcodes -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pc", ["SW1A 1AA", "M1 1AE", "B33 8TH", "CR2 6XH", "DN55 1PT", "EC1A1BB", "W1A 0AX", "GIR 0AA"]
)
def test_uk_postcodes(pc: str) -> None:
    assert found(f"Lives at {pc}, London", "postcode") == [pc]


@pytest.mark.parametrize("text", ["QA1 1AA", "VX1 1AA", "SW1A 1CA", "AB1", "1AA 1AA"])
def test_uk_postcode_negatives(text: str) -> None:
    assert find_postcodes(text) == []


def test_us_zip_needs_context_or_hint() -> None:
    assert found("We counted 12345 events", "postcode") == []
    assert found("Springfield, IL 62704", "postcode") == ["62704"]
    assert found("ZIP: 90210-1234", "postcode") == ["90210-1234"]
    assert detect_value("90210", column_hints("zip")) == [(0, 5, "postcode")]
    assert detect_value("90210", column_hints("amount")) == []


# --- person names ----------------------------------------------------------------------------
def test_dictionaries_are_shipped() -> None:
    assert 300 <= len(first_names()) <= 2000
    assert 300 <= len(surnames()) <= 2000
    assert {"john", "priya", "wei", "fatima"} <= first_names()
    assert {"smith", "patel", "nguyen", "kowalski"} <= surnames()


def test_person_name_positives() -> None:
    text = "Seen by Dr Okafor with John Smith and Priya K. Sharma; spoke to Mrs. J. Patel and Smith, John."
    assert sorted(t for t, _ in texts(text, find_person_names(text))) == sorted(
        ["Okafor", "J. Patel", "John Smith", "Priya K. Sharma", "Smith, John"]
    )


def test_first_name_with_unknown_capitalised_surname() -> None:
    assert found("Patient Anna Kowalczyk attended", "person_name") == ["Anna Kowalczyk"]


@pytest.mark.parametrize(
    "text",
    [
        "Will review in May 2020.",
        "May Allergy clinic follow-up",
        "Grace Hospital discharge",
        "Bill Payment received",
        "Anna Hospital ward",
        "The Patient was seen",
        "mark the chart",
        "john smith in lower case prose",
    ],
)
def test_person_name_negatives(text: str) -> None:
    assert found(text, "person_name") == []


def test_ambiguous_first_name_with_known_surname() -> None:
    assert found("Will Smith called", "person_name") == ["Will Smith"]
    assert found("May Patel attended", "person_name") == ["May Patel"]


def test_name_hinted_column_whole_value() -> None:
    hints = column_hints("patient_name")
    assert detect_value("ANNA SMITH", hints) == [(0, 10, "person_name")]
    assert detect_value("smith", column_hints("surname")) == [(0, 5, "person_name")]
    assert detect_value("N/A", hints) == []


# --- cards, IBANs, IPs -----------------------------------------------------------------------
def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "5500005555555559", "378282246310005"])
def test_card_positives(card: str) -> None:
    assert found(f"paid with {card} today", "credit_card") == [card]


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # Luhn fails
        "1234567812345670",  # Luhn passes, no issuer starts with 1
        "0000000000000000",
        "41111111111",  # too short
    ],
)
def test_card_negatives(text: str) -> None:
    assert find_credit_cards(text) == []


def test_iban() -> None:
    assert iban_ok("GB82WEST12345698765432")
    assert not iban_ok("GB82WEST12345698765433")
    assert not iban_ok("GB82WEST1234569876543")  # wrong length for GB
    text = "IBAN GB82 WEST 1234 5698 7654 32 NOTE and DE89370400440532013000."
    assert [t for t, _ in texts(text, find_ibans(text))] == ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"]
    assert find_ibans("GB00WEST12345698765432") == []


def test_ip_addresses() -> None:
    text = "from 192.168.1.20 and 2001:db8::8a2e:370:7334 at 12:30:45 using v1.2.3.4.5 and 999.1.1.1"
    assert [t for t, _ in texts(text, find_ip_addresses(text))] == ["192.168.1.20", "2001:db8::8a2e:370:7334"]


# --- combined --------------------------------------------------------------------------------
def test_detect_mixed_text_and_overlaps() -> None:
    text = (
        "Pt John Smith (DOB 02/05/1961), NHS 943 476 5919, email john.smith@nhs.net, "
        "tel +44 7700 900123, card 4111 1111 1111 1111, lives SW1A 1AA."
    )
    got = texts(text, detect(text))
    assert got == [
        ("John Smith", "person_name"),
        ("02/05/1961", "date_of_birth"),
        ("943 476 5919", "national_id"),
        ("john.smith@nhs.net", "email"),
        ("+44 7700 900123", "phone"),
        ("4111 1111 1111 1111", "credit_card"),
        ("SW1A 1AA", "postcode"),
    ]
    spans = detect(text)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_detect_kind_filter_and_unknown_kind() -> None:
    text = "john@x.com 07700 900123"
    assert [k for _, _, k in detect(text, ["phone"])] == ["phone"]
    with pytest.raises(ValueError, match="Unknown PII kind"):
        detect(text, ["nope"])
    assert set(KINDS) == {
        "email",
        "phone",
        "national_id",
        "insurance_id",
        "date_of_birth",
        "postcode",
        "person_name",
        "credit_card",
        "iban",
        "ip_address",
    }


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        ("email", {"email"}),
        ("E_Mail", {"email"}),
        ("patientEmail", {"email"}),
        ("mobile", {"phone"}),
        ("tel", {"phone"}),
        ("ssn", {"national_id"}),
        ("nhs_number", {"national_id"}),
        ("ni_number", {"national_id"}),
        ("dob", {"date_of_birth"}),
        ("DateOfBirth", {"date_of_birth"}),
        ("postcode", {"postcode"}),
        ("zip", {"postcode"}),
        ("first_name", {"person_name"}),
        ("surname", {"person_name"}),
        ("name", {"person_name"}),
        ("diagnosis", set()),
        ("age", set()),
        ("notes", set()),
        ("timezone", set()),
        ("telemetry", set()),
    ],
)
def test_column_hints(name: str, kinds: set[str]) -> None:
    assert set(column_hints(name)) == kinds
