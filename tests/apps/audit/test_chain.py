"""apps.audit.chain: the Python canonical encoding matches the SQL one, and verify_rows finds the
first broken position of each chain for every kind of tampering."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import pytest
from django.db import connection

from apps.audit.chain import GENESIS, ROW_COLUMNS, canonical, event_hash, verify_rows
from apps.audit.models import AuditEvent
from apps.audit.selectors import iter_chain_rows
from apps.audit.services import audit_record
from apps.audit.sql import FIELDS
from apps.common.context import Actor, context
from apps.tenancy.scope import tenant_scope

# One event's hashed fields, in the order of apps.audit.sql.FIELDS.
BASE_FIELDS: dict[str, Any] = {
    "chain": "t1",
    "seq": 1,
    "prev_hash": GENESIS,
    "created_us": 1_700_000_000_123_456,
    "tenant_id": 1,
    "actor_type": "user",
    "actor_id": "42",
    "actor_label": "ann@example.org",
    "action": "member.added",
    "target_type": "tenancy.membership",
    "target_id": "7",
    "outcome": "success",
    "request_id": "req-0001",
    "source_ip": "10.0.0.1",
    "user_agent": "curl/8",
    "details": '{"role":"owner"}',
}
assert tuple(BASE_FIELDS) == FIELDS
BASE: tuple[Any, ...] = tuple(BASE_FIELDS.values())
FIELD_INDEX = {name: i for i, name in enumerate(FIELDS)}
NULLABLE = ("tenant_id", "actor_id", "actor_label", "target_type", "target_id", "request_id", "source_ip", "user_agent")

HUGE_DETAILS = json.dumps(
    {"rows": [{"name": f"Zoë-{i}-名前-🧬", "note": "a\nb\tc"} for i in range(20000)]},
    ensure_ascii=False,
    separators=(",", ":"),
)


def with_fields(**changes: Any) -> tuple[Any, ...]:
    values = list(BASE)
    for name, value in changes.items():
        values[FIELD_INDEX[name]] = value
    return tuple(values)


TRICKY: dict[str, tuple[Any, ...]] = {
    "plain": BASE,
    "unicode": with_fields(
        actor_label="Zoë Ångström 名前 🧬 e\u0301 שלום", details='{"name":"Zoë 🧬"}', user_agent="Mozilla/5.0 (ü)"
    ),
    "newlines": with_fields(actor_label="line1\nline2\r\nline3", user_agent="a\tb\rc", details='{"x":"a\\nb"}'),
    "empty_strings": with_fields(
        actor_id="",
        actor_label="",
        target_type="",
        target_id="",
        request_id="",
        source_ip="",
        user_agent="",
        details="",
    ),
    "nulls": with_fields(**{name: None for name in NULLABLE}),
    "dash_vs_null": with_fields(actor_id="-", actor_label="-", target_id=None),
    "length_prefix_lookalikes": with_fields(actor_id="3:abc", actor_label="0:", target_id="12:", details="-"),
    "big_numbers": with_fields(seq=2**62, created_us=-1_234_567, tenant_id=2**62 + 5),
    "zero_tenant": with_fields(tenant_id=0, created_us=0),
    "huge_details": with_fields(details=HUGE_DETAILS),
    "platform_chain": with_fields(chain="platform", tenant_id=None),
}

_SQL_ARGS = (
    "%s::text, %s::bigint, %s::text, %s::bigint, %s::bigint, %s::text, %s::text, %s::text, %s::text, "
    "%s::text, %s::text, %s::text, %s::text, %s::text, %s::text, %s::text"
)


# --- the encoding: Python == SQL ----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("case", sorted(TRICKY))
def test_python_canonical_matches_sql(case: str) -> None:
    values = TRICKY[case]
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT cohort_audit_canonical({_SQL_ARGS}), "
            f"encode(sha256(convert_to(cohort_audit_canonical({_SQL_ARGS}), 'UTF8')), 'hex')",
            [*values, *values],
        )
        sql_text, sql_hash = cur.fetchone()
    assert canonical(*values) == sql_text
    assert event_hash(*values) == sql_hash


@pytest.mark.django_db
def test_random_values_match_sql() -> None:
    rng = random.Random(20240601)
    alphabet = "ab:-0123456789 \n\r\t\"'\\{}[],é名🧬\u0301\u200b"

    def text() -> str | None:
        if rng.random() < 0.2:
            return None
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))

    cases = []
    for seq in range(1, 60):
        values = list(BASE)
        values[1] = seq
        for name in NULLABLE:
            if name != "tenant_id":
                values[FIELD_INDEX[name]] = text()
        values[FIELD_INDEX["details"]] = text() or ""
        cases.append(tuple(values))
    with connection.cursor() as cur:
        for values in cases:
            cur.execute(f"SELECT cohort_audit_canonical({_SQL_ARGS})", list(values))
            assert cur.fetchone()[0] == canonical(*values), values


def test_empty_string_null_and_dash_are_distinct() -> None:
    texts = {canonical(*with_fields(actor_id=v)) for v in (None, "", "-", "0:", "1:-")}
    assert len(texts) == 5


def test_length_prefix_prevents_field_boundary_shifts() -> None:
    a = canonical(*with_fields(actor_id="ab", actor_label="c"))
    b = canonical(*with_fields(actor_id="a", actor_label="bc"))
    c = canonical(*with_fields(actor_id="a:b", actor_label=None))
    assert len({a, b, c}) == 3


def test_length_prefix_counts_utf8_bytes() -> None:
    text = canonical(*with_fields(actor_label="🧬é"))
    assert "6:🧬é" in text  # 4 + 2 bytes, not 2 code points


@pytest.mark.django_db
def test_stored_events_rehash_in_python(tenant: Any) -> None:
    """Events written by the real append function with awkward values verify in pure Python."""
    label = "Zoë\nÅngström 🧬 -"
    details = {"note": "line1\nline2 名前", "empty": "", "none": None, "big": "x" * 7000}
    with (
        context(
            request_id="req-tricky-0001",
            source_ip="::1",
            user_agent="ua\twith\ttabs",
            actor=Actor(type="user", id="", label=label),
        ),
        tenant_scope(tenant.pk),
    ):
        audit_record(action="test.tricky", tenant=tenant, target_type="x", target_id="", details=details)
        audit_record(action="test.tricky", tenant=tenant, details={})
        rows = list(iter_chain_rows(chain=f"t{tenant.pk}"))
        stored = AuditEvent.objects.filter(action="test.tricky").order_by("seq")
        assert stored[0].actor_label == label and stored[0].actor_id == ""
    assert len(rows) >= 3
    for row in rows:
        assert event_hash(row[1], row[2], row[3], *row[5:]) == row[4]
    assert verify_rows(rows).ok


# --- verify_rows: first broken position per chain ---------------------------------------------------------


def make_chain(chain: str, n: int, *, tenant_id: int | None = 1, start_id: int = 1) -> list[tuple[Any, ...]]:
    """Rows in the verifier's order: (id, chain, seq, prev_hash, hash, created_us, tenant_id, ...details)."""
    rows, prev = [], GENESIS
    for seq in range(1, n + 1):
        rest = (
            1_700_000_000_000_000 + seq,
            tenant_id,
            "user",
            "1",
            "ann",
            f"act.{seq}",
            "x",
            str(seq),
            "success",
            f"req-{seq}",
            "10.0.0.1",
            None,
            json.dumps({"n": seq}),
        )
        h = event_hash(chain, seq, prev, *rest)
        rows.append((start_id + seq - 1, chain, seq, prev, h, *rest))
        prev = h
    return rows


def heads_of(*chains: list[tuple[Any, ...]]) -> dict[str, tuple[int, str]]:
    return {rows[-1][1]: (rows[-1][2], rows[-1][4]) for rows in chains if rows}


def replace_row(row: tuple[Any, ...], **changes: Any) -> tuple[Any, ...]:
    values = list(row)
    for name, value in changes.items():
        values[ROW_COLUMNS.index(name)] = value
    return tuple(values)


def only_problem(result: Any) -> tuple[str, int, str]:
    assert len(result.problems) == 1, result.problems
    p = result.problems[0]
    return p.chain, p.seq, p.kind


def test_intact_chains_verify() -> None:
    a, b = make_chain("t1", 10), make_chain("t2", 4, tenant_id=2, start_id=100)
    result = verify_rows(a + b, heads=heads_of(a, b), checkpoint={"t1": (7, a[6][4]), "t2": (4, b[3][4])})
    assert result.ok and result.num_events == 14 and result.chains["t1"] == (10, a[-1][4])


def test_edited_row_is_a_hash_mismatch_at_its_seq() -> None:
    rows = make_chain("t1", 10)
    rows[4] = replace_row(rows[4], details='{"n":999}')
    assert only_problem(verify_rows(rows, heads=heads_of(rows))) == ("t1", 5, "hash_mismatch")


def test_edit_with_recomputed_hash_breaks_the_next_link() -> None:
    rows = make_chain("t1", 10)
    r = replace_row(rows[4], details='{"n":999}')
    rows[4] = replace_row(r, hash=event_hash(*r[1:4], *r[5:]))
    assert only_problem(verify_rows(rows, heads=heads_of(rows))) == ("t1", 6, "broken_link")


def test_deleted_row_is_missing_at_its_seq() -> None:
    rows = make_chain("t1", 10)
    del rows[3]
    result = verify_rows(rows, heads=heads_of(rows))
    assert only_problem(result) == ("t1", 4, "missing_event")
    assert result.problems[0].event_id == 5  # the event found where #4 should be


def test_swapped_rows_break_the_link_at_the_lower_seq() -> None:
    rows = make_chain("t1", 10)
    r3, r6 = rows[2], rows[5]
    rows[2], rows[5] = replace_row(r6, seq=3), replace_row(r3, seq=6)
    assert only_problem(verify_rows(rows, heads=heads_of(make_chain("t1", 10)))) == ("t1", 3, "broken_link")


def test_duplicate_seq_is_out_of_order() -> None:
    rows = make_chain("t1", 5)
    rows.insert(3, rows[2])
    assert only_problem(verify_rows(rows))[1:] == (3, "out_of_order")


def test_forged_row_with_wrong_hash_is_found_at_its_seq() -> None:
    rows = make_chain("t1", 8)
    forged = replace_row(rows[3], id=999, action="member.role_changed", hash=hashlib.sha256(b"forged").hexdigest())
    rows = rows[:3] + [forged] + [replace_row(r, seq=r[2] + 1) for r in rows[3:]]
    assert only_problem(verify_rows(rows)) == ("t1", 4, "hash_mismatch")


def test_truncated_tail_with_matching_head_needs_the_checkpoint() -> None:
    full = make_chain("t1", 10)
    rows = full[:7]
    assert verify_rows(rows, heads=heads_of(rows)).ok  # the head was rewound too: self-consistent
    result = verify_rows(rows, heads=heads_of(rows), checkpoint={"t1": (10, full[-1][4])})
    assert only_problem(result) == ("t1", 8, "truncated")


def test_truncation_against_the_head_table() -> None:
    full = make_chain("t1", 10)
    assert only_problem(verify_rows(full[:7], heads=heads_of(full))) == ("t1", 8, "truncated")


def test_wholesale_rewrite_is_caught_by_the_checkpoint() -> None:
    original = make_chain("t1", 10)
    rewritten = make_chain("t1", 10)
    rewritten = [replace_row(r, action="rewritten") for r in rewritten]
    prev = GENESIS
    fixed = []
    for r in rewritten:  # re-hash the whole chain: internally consistent
        r = replace_row(r, prev_hash=prev)
        r = replace_row(r, hash=event_hash(*r[1:4], *r[5:]))
        fixed.append(r)
        prev = r[4]
    assert verify_rows(fixed, heads=heads_of(fixed)).ok
    result = verify_rows(fixed, heads=heads_of(fixed), checkpoint={"t1": (8, original[7][4])})
    assert only_problem(result) == ("t1", 8, "rewritten")


def test_head_mismatch_is_rewritten() -> None:
    rows = make_chain("t1", 5)
    assert only_problem(verify_rows(rows, heads={"t1": (5, "f" * 64)})) == ("t1", 5, "rewritten")


def test_chain_deleted_entirely_is_truncated_from_one() -> None:
    rows = make_chain("t1", 5)
    assert only_problem(verify_rows([], checkpoint={"t1": (5, rows[-1][4])})) == ("t1", 1, "truncated")


def test_only_the_first_problem_of_each_chain_is_reported() -> None:
    a, b, c = make_chain("t1", 10), make_chain("t2", 10, tenant_id=2, start_id=100), make_chain("t3", 3, start_id=200)
    a[2] = replace_row(a[2], outcome="denied")
    a[6] = replace_row(a[6], outcome="denied")
    del b[8]
    result = verify_rows(a + b + c, heads=heads_of(make_chain("t1", 10), make_chain("t2", 10, tenant_id=2), c))
    assert [(p.chain, p.seq, p.kind) for p in result.problems] == [
        ("t1", 3, "hash_mismatch"),
        ("t2", 9, "missing_event"),
    ]
    assert result.num_events == 22 and not result.ok
