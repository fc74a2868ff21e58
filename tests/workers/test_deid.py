"""De-identification policies, transforms and k-anonymity (pure Python, no database)."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from workers.deid.policy import ColumnPolicy, DeidPolicy, PolicyError, output_schema
from workers.deid.transform import (
    Deidentifier,
    KAnonymizer,
    deidentify,
    group_keys,
    make_token,
    make_tokens,
    normalise_for_token,
    postcode_district,
)
from workers.schema import Column, DatasetSchema

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def schema_of(**types: str) -> DatasetSchema:
    return DatasetSchema(columns=[Column(name=n, type=t) for n, t in types.items()])


def batch_of(schema: DatasetSchema, **data: list) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(data, schema=schema.arrow_schema())


def run(schema: DatasetSchema, policy: DeidPolicy, **data: list) -> dict[str, list]:
    return Deidentifier(schema, policy, KEY).transform(batch_of(schema, **data)).to_pydict()


def cp(action: str, **params: object) -> ColumnPolicy:
    return ColumnPolicy(action, dict(params))


# --- policy (de)serialisation and checks -------------------------------------------------------
def test_policy_round_trip() -> None:
    policy = DeidPolicy(
        columns={"email": cp("pseudonymise"), "age": cp("generalise", bin_width=10), "x": cp("drop")},
        quasi_identifiers=["age"],
        k=5,
    )
    data = json.loads(json.dumps(policy.to_dict()))
    assert DeidPolicy.from_dict(data) == policy
    assert DeidPolicy.from_dict({"columns": {"x": "drop"}}).columns["x"] == ColumnPolicy("drop", {})


def check_fields(schema: DatasetSchema, policy: DeidPolicy) -> dict[str, list[str]]:
    with pytest.raises(PolicyError) as exc:
        policy.check(schema)
    return exc.value.fields


CHECK_SCHEMA = DatasetSchema(
    columns=[
        Column("pid", "string", "identifier"),
        Column("email", "string"),
        Column("dob", "date"),
        Column("age", "integer"),
        Column("weight", "float"),
        Column("postcode", "string"),
        Column("flag", "boolean"),
        Column("notes", "text"),
        Column("y", "category", "label"),
    ],
    label="y",
    task="binary_classification",
)


def ok_policy(**extra: ColumnPolicy) -> DeidPolicy:
    return DeidPolicy(columns={"pid": cp("pseudonymise"), **extra})


def test_check_accepts_a_valid_policy() -> None:
    ok_policy(
        email=cp("mask", keep_last=4, char="#"),
        dob=cp("generalise", to="year"),
        age=cp("generalise", bins=[0, 18, 65, 120]),
        weight=cp("generalise", bin_width=5.0, origin=2.5),
        postcode=cp("generalise", prefix="outward"),
        notes=cp("redact", kinds=["email", "phone"]),
        y=cp("generalise", map={"a": "A"}),
    ).check(CHECK_SCHEMA)


@pytest.mark.parametrize(
    ("policy", "path", "fragment"),
    [
        (ok_policy(nope=cp("keep")), "columns.nope", "Unknown column"),
        (ok_policy(email=cp("shred")), "columns.email.action", "Unknown action"),
        (ok_policy(dob=cp("mask")), "columns.dob.params", "mask applies"),
        (ok_policy(weight=cp("mask")), "columns.weight.params", "mask applies"),
        (ok_policy(email=cp("mask", keep_last=-1)), "columns.email.params", "keep_last"),
        (ok_policy(email=cp("mask", char="**")), "columns.email.params", "char"),
        (ok_policy(email=cp("mask", shout=True)), "columns.email.params", "Unknown parameter"),
        (ok_policy(weight=cp("pseudonymise")), "columns.weight.params", "cannot be pseudonymised"),
        (ok_policy(dob=cp("generalise", to="week")), "columns.dob.params", "year"),
        (ok_policy(age=cp("generalise", bin_width=0)), "columns.age.params", "bin_width"),
        (ok_policy(age=cp("generalise", bins=[10, 5])), "columns.age.params", "increasing"),
        (ok_policy(age=cp("generalise", prefix=3)), "columns.age.params", "Unknown parameter"),
        (ok_policy(postcode=cp("generalise", prefix=0)), "columns.postcode.params", "prefix"),
        (ok_policy(postcode=cp("generalise")), "columns.postcode.params", "prefix"),
        (ok_policy(flag=cp("generalise")), "columns.flag.params", "cannot be generalised"),
        (ok_policy(notes=cp("redact", kinds=["email", "aura"])), "columns.notes.params", "kinds"),
        (ok_policy(age=cp("redact")), "columns.age.params", "redact applies"),
        (ok_policy(y=cp("drop")), "columns.y", "label column cannot be dropped"),
        (ok_policy(y=cp("pseudonymise")), "columns.y", "label column cannot be pseudonymised"),
        (DeidPolicy(columns={}), "columns.pid", "Identifier columns"),
        (ok_policy(), "k", None),
        (DeidPolicy(columns={"pid": cp("drop")}, quasi_identifiers=["age"], k=1), "k", "between 2 and 1000"),
        (DeidPolicy(columns={"pid": cp("drop")}, quasi_identifiers=["age"], k=1001), "k", "between 2 and 1000"),
        (DeidPolicy(columns={"pid": cp("drop")}, quasi_identifiers=["ghost"], k=5), "quasi_identifiers[0]", "Unknown"),
        (DeidPolicy(columns={"pid": cp("drop")}, quasi_identifiers=["pid"], k=5), "quasi_identifiers[0]", "dropped"),
        (DeidPolicy(columns={"pid": cp("drop")}, quasi_identifiers=[], k=5), "quasi_identifiers", "at least one"),
    ],
)
def test_check_errors(policy: DeidPolicy, path: str, fragment: str | None) -> None:
    if fragment is None:
        policy.check(CHECK_SCHEMA)  # the control case: no error
        return
    fields = check_fields(CHECK_SCHEMA, policy)
    assert path in fields, fields
    assert any(fragment in m for m in fields[path]), fields[path]


def test_regression_label_must_stay_numeric() -> None:
    schema = DatasetSchema(
        columns=[Column("x", "integer"), Column("y", "float", "label")], label="y", task="regression"
    )
    fields = check_fields(schema, DeidPolicy(columns={"y": cp("generalise", bin_width=1)}))
    assert "columns.y" in fields


def test_check_collects_every_error() -> None:
    fields = check_fields(CHECK_SCHEMA, DeidPolicy(columns={"nope": cp("keep"), "email": cp("shred")}, k=0))
    assert {"columns.nope", "columns.email.action", "columns.pid", "k", "quasi_identifiers"} <= set(fields)


def test_output_schema() -> None:
    policy = ok_policy(
        email=cp("pseudonymise"),
        dob=cp("generalise", to="year"),
        age=cp("generalise", bin_width=10),
        postcode=cp("generalise", prefix="outward"),
        notes=cp("drop"),
    )
    policy.quasi_identifiers = ["dob", "age"]
    out = output_schema(CHECK_SCHEMA, policy)
    assert out.names == ["pid", "email", "dob", "age", "weight", "postcode", "flag", "y"]
    types = {c.name: (c.type, c.role) for c in out.columns}
    assert types["pid"] == ("string", "identifier")
    assert types["email"] == ("string", "identifier")  # tokens are join keys, never features
    assert types["dob"] == ("integer", "quasi_identifier")
    assert types["age"] == ("category", "quasi_identifier")
    assert types["postcode"] == ("string", "feature")
    assert types["y"] == ("category", "label")
    assert out.label == "y"
    out.check()
    month = output_schema(CHECK_SCHEMA, ok_policy(dob=cp("generalise", to="month")))
    assert month.column("dob").type == "string"


# --- keep / drop / mask ----------------------------------------------------------------------
def test_keep_and_drop() -> None:
    schema = schema_of(a="integer", b="string")
    out = run(schema, DeidPolicy({"b": cp("drop")}), a=[1, None], b=["x", "y"])
    assert out == {"a": [1, None]}


def test_mask_strings_and_integers() -> None:
    schema = schema_of(card="string", acct="integer", short="string")
    policy = DeidPolicy(
        {"card": cp("mask", keep_last=4), "acct": cp("mask", keep_last=2, char="#"), "short": cp("mask", keep_last=4)}
    )
    out = run(
        schema,
        policy,
        card=["4111111111111111", "ab", None, "ñandú12345"],
        acct=[123456, 7, None, -5],
        short=["abcd", "abcde", "", "xy"],
    )
    assert out["card"] == ["************1111", "**", None, "******2345"]
    assert out["acct"] == ["####56", "#", None, "##"]
    # values no longer than keep_last are masked entirely, never revealed
    assert out["short"] == ["****", "*bcde", "", "**"]


# --- pseudonymise ----------------------------------------------------------------------------
def test_token_format_and_normalisation() -> None:
    tok = make_token(KEY, "john@example.com")
    assert tok.startswith("tok_")
    assert len(tok) == 4 + 26
    assert tok[4:].isalnum()
    assert tok == tok.lower()
    assert make_token(KEY, "  John@Example.COM ") == tok
    assert make_token(OTHER_KEY, "john@example.com") != tok
    assert normalise_for_token("07700 900123") == normalise_for_token("07700-900-123") == "07700900123"
    assert normalise_for_token("+44 7700 900123") == "+447700900123"
    assert normalise_for_token("Anna   Smith") == "anna smith"


def random_token_inputs(n: int, seed: int = 1234) -> list[str | None]:
    """Values that exercise every branch of normalise_for_token: case, every kind of whitespace
    (ASCII control separators, NBSP, ideographic space), NFKC-sensitive and case-folding Unicode,
    phone-like values with and without enough digits, numbers, empties and nulls."""
    rng = np.random.default_rng(seed)
    ws = [" ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\u00a0", "\u3000", "\u2003", "\x85"]
    alphabet = [
        *"abcXYZ019+-().@/_ ",
        "ß",
        "ẞ",
        "İ",
        "ﬁ",
        "Ａ",
        "１",
        "½",
        "\u00e9",
        "e\u0301",
        "Ω",
        "ς",
        "Σ",
        "😀",
        "\x00",
    ]
    out: list[str | None] = []
    for i in range(n):
        kind = i % 8
        if kind == 0:  # phone-like, sometimes with too few digits or a leading +
            digits = "".join(rng.choice(list("0123456789"), int(rng.integers(3, 14))))
            seps = [" ", "-", ".", "(", ")", "/", "  "]
            s = "".join(d + (str(rng.choice(seps)) if rng.random() < 0.3 else "") for d in digits)
            out.append(("+" if rng.random() < 0.4 else "") + s)
        elif kind == 1:  # numbers
            out.append(str(int(rng.integers(-(10**12), 10**12))) if rng.random() < 0.5 else repr(float(rng.normal())))
        elif kind == 2:  # ASCII ids with case and padding
            core = "".join(rng.choice(list("ABCDEFabcdef0123456789_@."), int(rng.integers(0, 12))))
            out.append(
                str(rng.choice(ws)) * int(rng.integers(0, 2)) + core + str(rng.choice(ws)) * int(rng.integers(0, 3))
            )
        elif kind == 7 and rng.random() < 0.2:
            out.append(None if rng.random() < 0.5 else "")
        else:  # mixed: Unicode, whitespace runs, punctuation
            parts = [str(rng.choice(alphabet + ws)) for _ in range(int(rng.integers(1, 16)))]
            out.append("".join(parts))
    out += out[: n // 20]  # repeats, so dictionary encoding has something to fold
    return out


@pytest.mark.parametrize("key", [KEY, b"s" * 16, b"l" * 64, bytes(range(100))])
def test_make_tokens_matches_make_token(key: bytes) -> None:
    values = random_token_inputs(50_000 if key == KEY else 5_000)
    expected = [None if v is None else make_token(key, v) for v in values]
    assert make_tokens(key, pa.array(values, pa.string())).to_pylist() == expected
    sliced = pa.array(values, pa.string()).slice(7, 1000)  # a non-zero array offset
    assert make_tokens(key, sliced).to_pylist() == expected[7:1007]
    assert make_tokens(key, pa.array([None, None], pa.string())).to_pylist() == [None, None]
    assert make_tokens(key, pa.array([], pa.string())).to_pylist() == []


def test_pseudonymise_deterministic_across_batches_and_types() -> None:
    schema = schema_of(email="string", pid="integer")
    policy = DeidPolicy({"email": cp("pseudonymise"), "pid": cp("pseudonymise")})
    d1 = Deidentifier(schema, policy, KEY)
    b1 = d1.transform(batch_of(schema, email=["A@x.com", "b@y.org", None], pid=[42, 7, None]))
    d2 = Deidentifier(schema, policy, KEY)  # a fresh instance: another file, another version
    b2 = d2.transform(batch_of(schema, email=["b@y.org", "a@X.COM "], pid=[7, 42]))
    assert b1.column("email").to_pylist()[:2] == list(reversed(b2.column("email").to_pylist()))
    assert b1.column("email")[2].as_py() is None
    assert b1.column("pid").to_pylist()[:2] == list(reversed(b2.column("pid").to_pylist()))
    assert b1.schema.field("pid").type == pa.string()
    # an integer id and its decimal string get the same token (joins across typed / untyped files)
    assert b1.column("pid")[0].as_py() == make_token(KEY, "42")
    # a different key gives unrelated tokens
    b3 = Deidentifier(schema, policy, OTHER_KEY).transform(batch_of(schema, email=["A@x.com"], pid=[42]))
    assert b3.column("email")[0].as_py() != b1.column("email")[0].as_py()
    assert b3.column("pid")[0].as_py() != b1.column("pid")[0].as_py()


def test_pseudonymise_dates_and_all_null() -> None:
    schema = schema_of(d="date", s="string")
    policy = DeidPolicy({"d": cp("pseudonymise"), "s": cp("pseudonymise")})
    out = run(schema, policy, d=[dt.date(2000, 1, 2), None], s=[None, None])
    assert out["d"][0] == make_token(KEY, "2000-01-02")
    assert out["s"] == [None, None]


def test_key_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Deidentifier(schema_of(a="string"), DeidPolicy({}), b"short")


def test_deidentifier_rejects_invalid_policy() -> None:
    with pytest.raises(PolicyError):
        Deidentifier(schema_of(a="string"), DeidPolicy({"a": cp("shred")}), KEY)


# --- generalise ------------------------------------------------------------------------------
def test_generalise_dates() -> None:
    schema = schema_of(d="date", t="datetime")
    t0 = dt.datetime(2021, 12, 31, 23, 59, tzinfo=dt.UTC)
    dates = [dt.date(1980, 3, 14), None, dt.date(2001, 11, 1)]
    years = run(
        schema,
        DeidPolicy({"d": cp("generalise", to="year"), "t": cp("generalise", to="year")}),
        d=dates,
        t=[t0, t0, None],
    )
    assert years == {"d": [1980, None, 2001], "t": [2021, 2021, None]}
    months = run(
        schema,
        DeidPolicy({"d": cp("generalise", to="month"), "t": cp("generalise", to="month")}),
        d=dates,
        t=[t0, None, t0],
    )
    assert months == {"d": ["1980-03", None, "2001-11"], "t": ["2021-12", None, "2021-12"]}


def test_generalise_numbers_bin_width() -> None:
    schema = schema_of(age="integer", w="float")
    policy = DeidPolicy({"age": cp("generalise", bin_width=10), "w": cp("generalise", bin_width=2.5, origin=1)})
    out = run(schema, policy, age=[0, 9, 10, 47, -3, None], w=[1.0, 3.49, 3.5, float("nan"), float("inf"), None])
    assert out["age"] == ["[0, 10)", "[0, 10)", "[10, 20)", "[40, 50)", "[-10, 0)", None]
    assert out["w"] == ["[1, 3.5)", "[1, 3.5)", "[3.5, 6)", None, None, None]


def test_generalise_numbers_bins() -> None:
    schema = schema_of(age="integer")
    policy = DeidPolicy({"age": cp("generalise", bins=[18, 40, 65])})
    out = run(schema, policy, age=[5, 18, 39, 40, 64, 65, 90, None])
    assert out["age"] == ["< 18", "[18, 40)", "[18, 40)", "[40, 65)", "[40, 65)", ">= 65", ">= 65", None]


def test_generalise_postcodes() -> None:
    assert postcode_district("SW1A 1AA") == "SW1A"
    assert postcode_district("sw1a1aa") == "SW1A"
    assert postcode_district("M1 1AE") == "M1"
    assert postcode_district("90210") == "902"
    assert postcode_district("90210-1234") == "902"
    assert postcode_district("221B Baker Street") is None
    schema = schema_of(pc="string", zip="string")
    policy = DeidPolicy({"pc": cp("generalise", prefix="outward"), "zip": cp("generalise", prefix=3)})
    out = run(schema, policy, pc=["SW1A 1AA", "B33 8TH", "nonsense", None], zip=[" 90210", "10001-0001", "1", None])
    assert out == {"pc": ["SW1A", "B33", None, None], "zip": ["902", "100", "1", None]}


def test_generalise_category_map() -> None:
    schema = schema_of(eth="category", city="string")
    policy = DeidPolicy(
        {
            "eth": cp("generalise", map={"White British": "White", "White Irish": "White"}),
            "city": cp("generalise", map={"Leeds": "North"}, other="Other"),
        }
    )
    out = run(schema, policy, eth=["White Irish", "Asian", None], city=["Leeds", "Bath", None])
    assert out == {"eth": ["White", "Asian", None], "city": ["North", "Other", None]}


# --- redact ----------------------------------------------------------------------------------
def test_redact_spans_and_stats() -> None:
    schema = schema_of(notes="text")
    deid = Deidentifier(schema, DeidPolicy({"notes": cp("redact", kinds="all")}), KEY)
    text = "Saw John Smith (DOB 02/05/1961); email john@x.com or call 07700 900123."
    out = deid.transform(batch_of(schema, notes=[text, "No PII here.", None, text]))
    assert out.column("notes").to_pylist() == [
        "Saw [NAME] (DOB [DOB]); email [EMAIL] or call [PHONE].",
        "No PII here.",
        None,
        "Saw [NAME] (DOB [DOB]); email [EMAIL] or call [PHONE].",
    ]
    st = deid.stats["notes"].to_dict()
    assert st["values_in"] == 3
    assert st["values_changed"] == 2
    assert st["nulls_out"] == 1
    assert st["redactions"] == {"date_of_birth": 2, "email": 2, "person_name": 2, "phone": 2}


def test_redact_only_selected_kinds() -> None:
    schema = schema_of(notes="text")
    out = run(schema, DeidPolicy({"notes": cp("redact", kinds=["email"])}), notes=["John Smith john@x.com"])
    assert out["notes"] == ["John Smith [EMAIL]"]


# --- k-anonymity -----------------------------------------------------------------------------
def kanon_batches(sizes: dict[tuple[str | None, int | None], int], batch_rows: int = 7) -> list[pa.RecordBatch]:
    rows = [(sex, band, i) for (sex, band), n in sizes.items() for i in range(n)]
    rng = np.random.default_rng(0)
    rng.shuffle(rows)
    out = []
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        out.append(
            pa.RecordBatch.from_pydict(
                {
                    "sex": pa.array([r[0] for r in chunk], pa.string()),
                    "band": pa.array([r[1] for r in chunk], pa.int64()),
                    "i": pa.array([r[2] for r in chunk], pa.int64()),
                }
            )
        )
    return out


def test_kanonymity_known_group_sizes() -> None:
    sizes = {("F", 1): 10, ("F", 2): 4, ("M", 1): 5, ("M", 2): 1, (None, 1): 3, (None, None): 6, ("F", None): 2}
    batches = kanon_batches(sizes)
    kan = KAnonymizer(["sex", "band"], k=5)
    for b in batches:
        kan.count(b)
    kept = [kan.suppress(b) for b in batches]
    remaining = Counter(
        (s, b)
        for batch in kept
        for s, b in zip(batch.column("sex").to_pylist(), batch.column("band").to_pylist(), strict=True)
    )
    assert remaining == {("F", 1): 10, ("M", 1): 5, (None, None): 6}
    rep = kan.report()
    assert rep["k_requested"] == 5
    assert rep["k_achieved"] == 5
    assert rep["k_achieved"] >= rep["k_requested"]
    assert rep["groups"] == 7
    assert rep["groups_suppressed"] == 4
    assert rep["rows_in"] == 31
    assert rep["rows_suppressed"] == 4 + 1 + 3 + 2
    assert rep["rows_out"] == 21
    assert rep["suppression_ratio"] == pytest.approx(10 / 31)
    assert rep["rows_unexpected"] == 0


def test_kanonymity_everything_suppressed_and_empty() -> None:
    kan = KAnonymizer(["sex"], k=3)
    assert kan.report()["k_achieved"] is None
    b = pa.RecordBatch.from_pydict({"sex": ["a", "b"]})
    kan.count(b)
    assert kan.suppress(b).num_rows == 0
    rep = kan.report()
    assert rep["k_achieved"] is None
    assert rep["suppression_ratio"] == 1.0


def test_kanonymity_unseen_group_is_suppressed() -> None:
    kan = KAnonymizer(["sex"], k=2)
    kan.count(pa.RecordBatch.from_pydict({"sex": ["a", "a"]}))
    out = kan.suppress(pa.RecordBatch.from_pydict({"sex": ["a", "zzz"]}))
    assert out.column("sex").to_pylist() == ["a"]
    assert kan.report()["rows_unexpected"] == 1


def test_group_keys_are_injective() -> None:
    b = pa.RecordBatch.from_pydict({"a": ["1:x", "1", None, ""], "b": ["y", ":xy", "-", None]})
    keys = group_keys(b, ["a", "b"]).to_pylist()
    assert len(set(keys)) == 4


def test_deidentify_two_passes_generalises_before_counting() -> None:
    schema = DatasetSchema(
        columns=[
            Column("email", "string", "identifier"),
            Column("age", "integer"),
            Column("sex", "category"),
            Column("notes", "text"),
        ]
    )
    policy = DeidPolicy(
        columns={
            "email": cp("pseudonymise"),
            "age": cp("generalise", bin_width=10),
            "notes": cp("redact", kinds="all"),
        },
        quasi_identifiers=["age", "sex"],
        k=3,
    )
    ages = [21, 22, 23, 29, 35, 36, 51]  # bands: 20s x4, 30s x2, 50s x1
    data: dict[str, list[Any]] = {
        "email": [f"p{i}@x.com" for i in range(7)],
        "age": ages,
        "sex": ["F"] * 7,
        "notes": ["call 07700 900123"] * 7,
    }
    calls = 0

    def factory() -> Iterator[pa.RecordBatch]:
        nonlocal calls
        calls += 1
        for i in range(0, 7, 3):
            yield pa.RecordBatch.from_pydict({k: v[i : i + 3] for k, v in data.items()}, schema=schema.arrow_schema())

    out_schema, batches, stats = deidentify(factory, schema, policy, KEY)
    rows = pa.Table.from_batches(list(batches)).to_pydict()
    assert calls == 2
    assert rows["age"] == ["[20, 30)"] * 4
    assert rows["notes"] == ["call [PHONE]"] * 4
    assert all(t.startswith("tok_") for t in rows["email"])
    assert out_schema.column("age").role == "quasi_identifier"
    d = stats.to_dict()
    assert d["rows_in"] == 7
    assert d["rows_out"] == 4
    assert d["columns"]["notes"]["redactions"] == {"phone": 7}
    assert d["columns"]["email"]["values_changed"] == 7
    assert d["k_anonymity"]["k_achieved"] == 4
    assert d["k_anonymity"]["rows_suppressed"] == 3
    json.dumps(d)


def test_deidentify_one_pass_without_k() -> None:
    schema = schema_of(a="string")
    calls = 0

    def factory() -> Iterator[pa.RecordBatch]:
        nonlocal calls
        calls += 1
        yield batch_of(schema, a=["x"])

    _, batches, stats = deidentify(factory, schema, DeidPolicy({"a": cp("pseudonymise")}), KEY)
    assert [b.num_rows for b in batches] == [1]
    assert calls == 1
    assert stats.to_dict()["k_anonymity"] is None


def test_transform_casts_compatible_input_and_rejects_missing_columns() -> None:
    schema = schema_of(a="integer", b="string")
    deid = Deidentifier(schema, DeidPolicy({}), KEY)
    out = deid.transform(pa.RecordBatch.from_pydict({"a": pa.array([1], pa.int32()), "b": ["x"]}))
    assert out.schema.field("a").type == pa.int64()
    with pytest.raises(ValueError, match="no column 'b'"):
        deid.transform(pa.RecordBatch.from_pydict({"a": [1]}))


# --- scale -----------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


N_ROWS = 1_000_000
BATCH_ROWS = 50_000
SCALE_SCHEMA = DatasetSchema(
    columns=[
        Column("pid", "integer", "identifier"),
        Column("age", "integer"),
        Column("sex", "category"),
        Column("visit", "date"),
        Column("notes", "text"),
    ]
)


def scale_batches(
    n_rows: int = N_ROWS, with_notes: bool = True, distinct_notes: bool = False
) -> Iterator[pa.RecordBatch]:
    """Deterministic synthetic stream, generated batch by batch (never held whole).

    ``distinct_notes`` appends a row reference so every note is unique (the worst case for
    redaction, which otherwise runs once per distinct value of a batch)."""
    templates = np.array(
        [
            "Stable, review in 3 months.",
            "Seen by Dr Okafor; call 07700 900123 if worse.",
            "Patient reports mild pain, no fever.",
            "Email results to pat.jones@example.org please.",
        ]
    )
    for start in range(0, n_rows, BATCH_ROWS):
        n = min(BATCH_ROWS, n_rows - start)
        rng = np.random.default_rng(start)
        notes = templates[rng.integers(0, len(templates), n)] if with_notes else np.array([""] * n)
        if distinct_notes:
            notes = np.char.add(notes, np.char.add(" Ref ", np.arange(start, start + n).astype(str)))
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(np.arange(start, start + n, dtype=np.int64)),
                pa.array(rng.integers(18, 90, n)),
                pa.array(np.where(rng.integers(0, 2, n) == 1, "F", "M")),
                pa.array(rng.integers(18000, 19000, n).astype(np.int32)).cast(pa.date32()),
                pa.array(notes),
            ],
            schema=SCALE_SCHEMA.arrow_schema(),
        )


@pytest.mark.slow
def test_million_rows_memory_stays_flat() -> None:
    """1e6 rows in 20 batches: RSS after warm-up must not grow with rows (groups are bounded)."""
    policy = DeidPolicy(
        columns={
            "pid": cp("pseudonymise"),
            "age": cp("generalise", bin_width=10),
            "visit": cp("generalise", to="month"),
            "notes": cp("redact", kinds=["phone", "email"]),
        },
        quasi_identifiers=["age", "sex"],
        k=5,
    )
    _, batches, stats = deidentify(lambda: scale_batches(with_notes=True), SCALE_SCHEMA, policy, KEY)
    rss: list[int] = []
    rows = 0
    for b in batches:
        rows += b.num_rows
        rss.append(_rss_bytes())
    assert rows == N_ROWS  # 8 age bands x 2 sexes, every group is large
    growth = rss[-1] - rss[3]
    assert growth < 40 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB after warm-up"
    rep = stats.to_dict()["k_anonymity"]
    assert rep["groups"] == 16
    assert rep["rows_suppressed"] == 0


@pytest.mark.slow
def test_transform_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    """Throughput of one pseudonymised (all-distinct ids), one generalised and one redacted
    text column (all-distinct notes) on 1e6 rows; printed for the record, asserted loosely."""
    policy = DeidPolicy(
        columns={
            "pid": cp("pseudonymise"),
            "age": cp("generalise", bin_width=10),
            "notes": cp("redact", kinds="all"),
        }
    )
    deid = Deidentifier(SCALE_SCHEMA, policy, KEY)
    batches = list(scale_batches(distinct_notes=True))
    t0 = time.perf_counter()
    rows = sum(deid.transform(b).num_rows for b in batches)
    elapsed = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\ndeid transform: {rows} rows in {elapsed:.2f}s = {rows / elapsed:,.0f} rows/s")
    assert rows == N_ROWS
    assert rows / elapsed > 20_000
