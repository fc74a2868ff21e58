"""Audit log reliability (RELIABILITY §1.2): tamper evidence (AUD-4), append-only (AUD-5),
atomicity (AUD-6), bulk writes (AUD-2), and concurrent appends to one chain."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, connections, transaction

import apps.accounts.services as account_services
import apps.audit.services as audit_services
import apps.tenancy.services as tenancy_services
from apps.accounts.models import ApiKey
from apps.audit.models import AuditEvent
from apps.audit.services import AuditMissing, audit_record, audited_change
from apps.audit.verification import audit_verify, checkpoint_create, heads_in_scope
from apps.tenancy.models import Invitation, Membership, Role, Tenant
from apps.tenancy.scope import platform_scope, tenant_scope
from tests.apps.audit.test_commands import signed_by_other_key
from tests.conftest import write_report

# --- helpers ------------------------------------------------------------------------------------------------

EVENT_COLUMNS = [f.column for f in AuditEvent._meta.concrete_fields]


def run_command(*args: str) -> tuple[int, str]:
    """Run a management command in-process; return (exit status, stdout + error message)."""
    out = io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=io.StringIO())
    except CommandError as exc:
        return exc.returncode, out.getvalue() + "\n" + str(exc)
    return 0, out.getvalue()


def verify_json(*args: str) -> tuple[int, dict[str, Any]]:
    code, out = run_command("audit_verify", "--json", *args)
    return code, json.loads(out[: out.rindex("}") + 1])


@contextmanager
def as_owner_without_triggers() -> Iterator[Any]:
    """A committed transaction as the table owner with the append-only triggers disabled: what an
    attacker holding the owner credentials (not the app) could do. Triggers are re-enabled before
    the commit, so nothing else ever runs without them."""
    with transaction.atomic(using="owner"), connections["owner"].cursor() as cur:
        # The owner may lift FORCE on its own table (RLS then exempts it), as such an attacker could.
        cur.execute("ALTER TABLE audit_auditevent NO FORCE ROW LEVEL SECURITY")
        cur.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        yield cur
        cur.execute("SET CONSTRAINTS ALL IMMEDIATE")  # run the deferred FK checks before ALTER TABLE
        cur.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")
        cur.execute("ALTER TABLE audit_auditevent FORCE ROW LEVEL SECURITY")


def snapshot() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with transaction.atomic(using="owner"), connections["owner"].cursor() as cur:
        cur.execute("ALTER TABLE audit_auditevent NO FORCE ROW LEVEL SECURITY")
        cur.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM audit_auditevent ORDER BY id")
        events = cur.fetchall()
        cur.execute("SELECT id, chain, seq, head_hash FROM audit_chainhead ORDER BY id")
        heads = cur.fetchall()
        cur.execute("ALTER TABLE audit_auditevent FORCE ROW LEVEL SECURITY")
        return events, heads


def restore(snap: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]) -> None:
    events, heads = snap
    placeholders = ", ".join(["%s"] * len(EVENT_COLUMNS))
    with as_owner_without_triggers() as cur:
        cur.execute("DELETE FROM audit_auditevent")
        cur.executemany(f"INSERT INTO audit_auditevent ({', '.join(EVENT_COLUMNS)}) VALUES ({placeholders})", events)
        cur.execute("DELETE FROM audit_chainhead")
        cur.executemany("INSERT INTO audit_chainhead (id, chain, seq, head_hash) VALUES (%s, %s, %s, %s)", heads)


def event_at(cur: Any, chain: str, seq: int) -> dict[str, Any]:
    cur.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM audit_auditevent WHERE chain = %s AND seq = %s", [chain, seq])
    return dict(zip(EVENT_COLUMNS, cur.fetchone(), strict=True))


def build_realistic_log(
    *,
    make_user: Callable[..., Any],
    make_tenant: Callable[..., Any],
    member: Callable[..., Any],
    api_client_for: Callable[..., Any],
) -> tuple[Tenant, int]:
    """Three tenants and their members doing ordinary work through the API. Returns the busiest
    tenant and the number of events written."""
    with platform_scope():
        before = AuditEvent.all_tenants.count()
    tenants = [make_tenant() for _ in range(3)]
    for i, t in enumerate(tenants):
        owner = member("owner", tenant=t)
        analyst = member("analyst", tenant=t)
        c = api_client_for(owner)
        base = f"/api/v1/tenants/{t.slug}"

        def ok(r: Any, status: int = 200) -> Any:
            assert r.status_code == status, r.content
            return r.json() if r.content else None

        keys = [
            ok(c.post(f"{base}/api-keys/", {"name": f"key{j}", "scopes": ["read"]}, format="json"), 201)
            for j in range(3 if i == 0 else 1)
        ]
        invitation = ok(
            c.post(f"{base}/invitations/", {"email": f"new{i}@example.org", "role": "analyst"}, format="json"), 201
        )
        if i == 0:
            ok(c.delete(f"{base}/api-keys/{keys[0]['id']}/"))
            ok(c.delete(f"{base}/invitations/{invitation['id']}/"))
            ok(c.post(f"{base}/invitations/", {"email": "later@example.org", "role": "auditor"}, format="json"), 201)
            members = [
                ok(c.post(f"{base}/members/", {"email": make_user().email, "role": "analyst"}, format="json"), 201)
                for _ in range(3)
            ]
            ok(c.patch(f"{base}/members/{members[0]['id']}/", {"role": "admin"}, format="json"))
            ok(c.patch(f"{base}/members/{members[1]['id']}/", {"role": "auditor"}, format="json"))
            assert c.delete(f"{base}/members/{members[2]['id']}/").status_code == 204
            ok(c.patch(f"{base}/", {"name": "Renamed clinic"}, format="json"))
            ok(c.post(f"{base}/audit-events/verify/"))
            # A denial is audited too.
            assert (
                api_client_for(analyst)
                .post(f"{base}/api-keys/", {"name": "x", "scopes": ["read"]}, format="json")
                .status_code
                == 403
            )
    with platform_scope():
        total = AuditEvent.all_tenants.count() - before
    return tenants[0], total


def head_of(chain: str) -> tuple[int, str]:
    with platform_scope():
        return heads_in_scope()[chain]


# --- AUD-4: tamper evidence -----------------------------------------------------------------------------


def _edit(cur: Any, chain: str, n: int) -> tuple[int, str]:
    row = event_at(cur, chain, 5)
    details = {**json.loads(row["details"]), "role": "owner"}  # a plausible, quiet edit
    cur.execute("UPDATE audit_auditevent SET details = %s WHERE id = %s", [json.dumps(details), row["id"]])
    assert cur.rowcount == 1
    return 5, "hash_mismatch"


def _delete(cur: Any, chain: str, n: int) -> tuple[int, str]:
    cur.execute("DELETE FROM audit_auditevent WHERE chain = %s AND seq = 6", [chain])
    assert cur.rowcount == 1
    return 6, "missing_event"


def _reorder(cur: Any, chain: str, n: int) -> tuple[int, str]:
    for old, new in ((4, -1), (8, 4), (-1, 8)):  # swap the positions of #4 and #8
        cur.execute("UPDATE audit_auditevent SET seq = %s WHERE chain = %s AND seq = %s", [new, chain, old])
        assert cur.rowcount == 1
    return 4, "broken_link"


def _forge(cur: Any, chain: str, n: int) -> tuple[int, str]:
    """Insert a plausible event as #7 (renumbering the rest and the head), linked to #6, with a
    hash that looks right but is not the canonical one."""
    at = 7
    prev = event_at(cur, chain, at - 1)
    cur.execute("UPDATE audit_auditevent SET seq = seq + 1000000 WHERE chain = %s AND seq >= %s", [chain, at])
    cur.execute("UPDATE audit_auditevent SET seq = seq - 999999 WHERE chain = %s AND seq >= 1000000", [chain])
    forged = {
        **prev,
        "seq": at,
        "created_at": prev["created_at"] + timedelta(milliseconds=3),
        "action": "member.role_changed",
        "target_type": "tenancy.membership",
        "details": json.dumps({"from": "analyst", "to": "owner", "user_id": 1}, separators=(",", ":")),
        "prev_hash": prev["hash"],
    }
    forged.pop("id")
    forged["hash"] = hashlib.sha256(json.dumps(forged, default=str, sort_keys=True).encode()).hexdigest()
    cols = list(forged)
    cur.execute(
        f"INSERT INTO audit_auditevent ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
        [forged[c] for c in cols],
    )
    cur.execute("UPDATE audit_chainhead SET seq = seq + 1 WHERE chain = %s", [chain])
    return at, "hash_mismatch"


def _truncate(cur: Any, chain: str, n: int) -> tuple[int, str]:
    """Delete the last 3 events and rewind the head to match: self-consistent without a checkpoint."""
    cur.execute("DELETE FROM audit_auditevent WHERE chain = %s AND seq > %s", [chain, n - 3])
    assert cur.rowcount == 3
    new_head = event_at(cur, chain, n - 3)
    cur.execute(
        "UPDATE audit_chainhead SET seq = %s, head_hash = %s WHERE chain = %s", [n - 3, new_head["hash"], chain]
    )
    return n - 2, "truncated"


TAMPER_CASES: dict[str, Callable[[Any, str, int], tuple[int, str]]] = {
    "edit_one_row": _edit,
    "delete_one_row": _delete,
    "reorder_two_rows": _reorder,
    "insert_forged_row": _forge,
    "truncate_tail": _truncate,
}

_CANONICAL_OF_ROW = (
    "cohort_audit_canonical(chain, seq, prev_hash, (extract(epoch FROM created_at) * 1000000)::bigint, "
    "tenant_id, actor_type, actor_id, actor_label, action, target_type, target_id, outcome, "
    "request_id, source_ip, user_agent, details)"
)


def _forge_and_rehash(cur: Any, chain: str, n: int) -> None:
    """The strongest attack short of the signing key: insert a forged #7 and recompute every hash
    after it with the system's own function, then move the head. Only the checkpoint can tell."""
    _forge(cur, chain, n)
    for seq in range(7, n + 2):
        cur.execute("SELECT hash FROM audit_auditevent WHERE chain = %s AND seq = %s", [chain, seq - 1])
        prev = cur.fetchone()[0]
        cur.execute("UPDATE audit_auditevent SET prev_hash = %s WHERE chain = %s AND seq = %s", [prev, chain, seq])
        cur.execute(
            f"UPDATE audit_auditevent SET hash = encode(sha256(convert_to({_CANONICAL_OF_ROW}, 'UTF8')), 'hex') "
            "WHERE chain = %s AND seq = %s RETURNING hash",
            [chain, seq],
        )
        last = cur.fetchone()[0]
    cur.execute("UPDATE audit_chainhead SET seq = %s, head_hash = %s WHERE chain = %s", [n + 1, last, chain])


@pytest.mark.django_db(transaction=True, databases=["default", "owner"])
def test_aud4_tamper_evidence(
    make_user: Any, make_tenant: Any, member: Any, api_client_for: Any, tmp_path: Path
) -> None:
    victim, num_events = build_realistic_log(
        make_user=make_user, make_tenant=make_tenant, member=member, api_client_for=api_client_for
    )
    chain = f"t{victim.pk}"
    n = head_of(chain)[0]
    assert num_events >= 30 and n >= 15, (num_events, n)
    checkpoint = tmp_path / "checkpoint.json"
    assert run_command("audit_checkpoint", "--out", str(checkpoint))[0] == 0
    assert verify_json("--checkpoint", str(checkpoint))[0] == 0
    snap = snapshot()

    cases: dict[str, dict[str, Any]] = {}
    for name, case in TAMPER_CASES.items():
        with as_owner_without_triggers() as cur:
            expected_seq, expected_kind = case(cur, chain, n)
        code, report = verify_json("--checkpoint", str(checkpoint))
        _, without_checkpoint = verify_json()
        found = [(p["chain"], p["seq"], p["kind"]) for p in report["problems"]]
        cases[name] = {
            "expected": [chain, expected_seq, expected_kind],
            "found": found,
            "exit_code": code,
            "detected": code == 1 and any(c == chain for c, _, _ in found),
            "position_correct": found == [(chain, expected_seq, expected_kind)],
            "detected_without_checkpoint": not without_checkpoint["ok"],
        }
        restore(snap)
        assert verify_json("--checkpoint", str(checkpoint))[0] == 0, f"restore after {name} failed"

    # Beyond the five cases: a forged row with every later hash recomputed and the head moved.
    with as_owner_without_triggers() as cur:
        _forge_and_rehash(cur, chain, n)
    rehash_code, rehash_report = verify_json("--checkpoint", str(checkpoint))
    rehash_plain = verify_json()[1]
    restore(snap)

    # Forged checkpoint files are refused (exit 2) before anything is verified.
    doc = json.loads(checkpoint.read_text())
    payload = json.loads(doc["payload"])
    payload["chains"][chain] = [n - 3, payload["chains"][chain][1]]  # hide the truncation
    edited = {**doc, "payload": json.dumps(payload, sort_keys=True, separators=(",", ":"))}
    forged_codes = {}
    for label, forged_doc in (("payload_edited", edited), ("signed_by_other_key", signed_by_other_key(doc))):
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps(forged_doc))
        forged_codes[label] = run_command("audit_verify", "--checkpoint", str(path))[0]

    detected = sum(c["detected"] for c in cases.values())
    correct = sum(c["position_correct"] for c in cases.values())
    rehash_caught = rehash_code == 1 and [(p["chain"], p["seq"], p["kind"]) for p in rehash_report["problems"]] == [
        (chain, n, "rewritten")
    ]
    passed = detected == correct == len(TAMPER_CASES) and all(c == 2 for c in forged_codes.values()) and rehash_caught
    write_report(
        "AUD-4",
        {
            "cases_run": len(TAMPER_CASES),
            "cases_detected": detected,
            "positions_correct": correct,
            "events_in_log": num_events,
            "victim_chain_length": n,
            "cases": cases,
            "full_rehash_detected_by_checkpoint": rehash_caught,
            "full_rehash_detected_without_checkpoint": not rehash_plain["ok"],
            "forged_checkpoint_exit_codes": forged_codes,
        },
        passed,
    )
    assert detected == len(TAMPER_CASES), cases
    assert correct == len(TAMPER_CASES), cases
    assert not cases["truncate_tail"]["detected_without_checkpoint"]  # only the checkpoint catches it
    assert rehash_caught, rehash_report
    assert forged_codes == {"payload_edited": 2, "signed_by_other_key": 2}


# --- AUD-5: append-only enforced by the database ------------------------------------------------------------


def _attempt(using: str, sql: str, params: list[Any] | None = None) -> tuple[bool, str]:
    """Run one statement in a savepoint; return (succeeded, error)."""
    try:
        with transaction.atomic(using=using), connections[using].cursor() as cur:
            cur.execute(sql, params or [])
    except DatabaseError as exc:
        return False, str(exc).splitlines()[0]
    return True, ""


@pytest.mark.django_db(transaction=True, databases=["default", "owner"])
def test_aud5_append_only(tenant: Any, member: Any) -> None:
    member("owner")
    checkpoint_create()
    with platform_scope():
        before = list(AuditEvent.all_tenants.order_by("id").values_list("id", "seq", "hash", "details"))
        some = before[0][0]
    assert len(before) >= 3
    row = ("t999", 1, "0" * 64, "f" * 64, "user", "x", "success", "{}")
    attempts = {
        "app": [
            ("UPDATE audit_auditevent SET details = '{}'", []),
            ("UPDATE audit_auditevent SET details = '{}' WHERE id = %s", [some]),
            ("DELETE FROM audit_auditevent", []),
            ("DELETE FROM audit_auditevent WHERE id = %s", [some]),
            ("TRUNCATE audit_auditevent", []),
            (
                "INSERT INTO audit_auditevent (chain, seq, prev_hash, hash, actor_type, action, outcome, details, "
                "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())",
                list(row),
            ),
            ("ALTER TABLE audit_auditevent DISABLE TRIGGER USER", []),
            ("DROP TRIGGER audit_append_only ON audit_auditevent", []),
            ("SET session_replication_role = replica", []),
            ("UPDATE audit_chainhead SET seq = 0", []),
            ("DELETE FROM audit_chainhead", []),
            ("INSERT INTO audit_chainhead (chain, seq, head_hash) VALUES ('t999', 5, %s)", ["0" * 64]),
            ("UPDATE audit_auditcheckpoint SET payload = '{}'", []),
            ("DELETE FROM audit_auditcheckpoint", []),
        ],
        "owner": [
            ("UPDATE audit_auditevent SET details = '{}' WHERE id = %s", [some]),
            ("UPDATE audit_auditevent SET seq = seq + 1000", []),
            ("DELETE FROM audit_auditevent WHERE id = %s", [some]),
            ("DELETE FROM audit_auditevent", []),
            ("TRUNCATE audit_auditevent", []),
            ("UPDATE audit_auditcheckpoint SET payload = '{}'", []),
            ("DELETE FROM audit_auditcheckpoint", []),
        ],
    }
    results: dict[str, list[dict[str, Any]]] = {"app": [], "owner": []}
    for who, using in (("app", "default"), ("owner", "owner")):
        with transaction.atomic(using=using):
            if who == "owner":  # every row visible to the owner: nothing is refused for lack of rows
                with connections[using].cursor() as cur:
                    cur.execute("ALTER TABLE audit_auditevent NO FORCE ROW LEVEL SECURITY")
            for sql, params in attempts[who]:
                ok, error = _attempt(using, sql, params)
                results[who].append({"sql": sql, "succeeded": ok, "error": error})
            if who == "owner":
                with connections[using].cursor() as cur:
                    cur.execute("ALTER TABLE audit_auditevent FORCE ROW LEVEL SECURITY")
    with platform_scope():
        after = list(AuditEvent.all_tenants.order_by("id").values_list("id", "seq", "hash", "details"))
    succeeded = [r for rs in results.values() for r in rs if r["succeeded"]]
    intact = after == before and audit_verify().ok
    write_report(
        "AUD-5",
        {
            "statements_attempted": sum(len(v) for v in attempts.values()),
            "statements_succeeded": len(succeeded),
            "as_app_role": len(attempts["app"]),
            "as_owner_with_triggers": len(attempts["owner"]),
            "log_unchanged": intact,
            "attempts": results,
        },
        not succeeded and intact,
    )
    assert succeeded == [], succeeded
    assert intact


# --- AUD-6: atomicity -------------------------------------------------------------------------------------


def _raise(**kwargs: Any) -> int:
    raise RuntimeError("injected audit failure")


def _bad_outcome(**kwargs: Any) -> int:
    """The real append, but the database refuses it (cohort_audit_append rejects the outcome)."""
    return audit_services.audit_record(**{**kwargs, "outcome": "bogus"})


def _count(action: str, tenant: Any = None) -> int:
    with platform_scope():
        return AuditEvent.all_tenants.filter(action=action, tenant=tenant).count()


@pytest.mark.django_db(transaction=True)
def test_aud6_atomicity(
    tenant: Any, member: Any, make_user: Any, api_client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = member("owner")
    analyst = member("analyst")
    with tenant_scope(tenant.pk):
        m = Membership.objects.get(user=analyst)
    creator = make_user()
    outcomes: dict[str, dict[str, Any]] = {}

    def check(
        name: str,
        mutated: Callable[[], bool],
        action: str,
        run: Callable[[], Any],
        errors: tuple[type[BaseException], ...],
    ) -> None:
        events_before = _count(action, tenant)
        with pytest.raises(errors):
            run()
        outcomes[name] = {"mutation_persisted": mutated(), "event_written": _count(action, tenant) > events_before}

    def role_is(role: str) -> Callable[[], bool]:
        def probe() -> bool:
            with tenant_scope(tenant.pk):
                return Membership.objects.get(pk=m.pk).role == role

        return probe

    def key_exists(name: str) -> Callable[[], bool]:
        def probe() -> bool:
            with tenant_scope(tenant.pk):
                return ApiKey.objects.filter(name=name).exists()

        return probe

    def change_role() -> Any:
        with tenant_scope(tenant.pk):
            return tenancy_services.membership_change_role(
                tenant=tenant, actor_role=Role.OWNER, membership=m, role=Role.AUDITOR
            )

    def create_key(name: str) -> Callable[[], Any]:
        def do() -> Any:
            with tenant_scope(tenant.pk):
                return account_services.api_key_create(
                    tenant=tenant, created_by=creator, name=name, scopes=["read"], expires_at=None
                )

        return do

    def invite() -> Any:
        with tenant_scope(tenant.pk):
            return tenancy_services.invitation_create(
                tenant=tenant, actor_role=Role.OWNER, invited_by=owner, email="x@example.org", role=Role.ANALYST
            )

    def invited() -> bool:
        with tenant_scope(tenant.pk):
            return Invitation.objects.filter(email="x@example.org").exists()

    def rename() -> Any:
        return tenancy_services.tenant_update(tenant=Tenant.objects.get(pk=tenant.pk), name="Renamed")

    def renamed() -> bool:
        return Tenant.objects.get(pk=tenant.pk).name == "Renamed"

    for label, fault, errors in (("raise", _raise, (RuntimeError,)), ("db_refuses", _bad_outcome, (DatabaseError,))):
        with monkeypatch.context() as mp:
            mp.setattr(tenancy_services, "audit_record", fault)
            mp.setattr(account_services, "audit_record", fault)
            check(f"membership_change_role/{label}", role_is(Role.AUDITOR), "member.role_changed", change_role, errors)
            check(
                f"api_key_create/{label}", key_exists(f"k-{label}"), "api_key.created", create_key(f"k-{label}"), errors
            )
            check(f"invitation_create/{label}", invited, "invitation.created", invite, errors)
            check(f"tenant_update/{label}", renamed, "tenant.updated", rename, errors)

    # Through the API: the request fails with a 500 and its transaction rolls back.
    client = api_client_for(owner)
    client.raise_request_exception = False
    with monkeypatch.context() as mp:
        mp.setattr(tenancy_services, "audit_record", _bad_outcome)
        before = _count("member.role_changed", tenant)
        r = client.patch(f"/api/v1/tenants/{tenant.slug}/members/{m.pk}/", {"role": "auditor"}, format="json")
        outcomes["api PATCH member/db_refuses"] = {
            "status": r.status_code,
            "mutation_persisted": role_is("auditor")(),
            "event_written": _count("member.role_changed", tenant) > before,
        }
    assert r.status_code == 500, r.content

    # A service that declares an audited change but records nothing is rolled back.
    def silent_change() -> None:
        with tenant_scope(tenant.pk), audited_change():
            Membership.objects.filter(pk=m.pk).update(role=Role.ADMIN)

    check("audited_change without audit_record", role_is(Role.ADMIN), "db.row_updated", silent_change, (AuditMissing,))

    # Control: without a fault the same service mutates and records.
    change_role()
    control = role_is(Role.AUDITOR)() and _count("member.role_changed", tenant) == 1

    without_event = sum(o["mutation_persisted"] and not o["event_written"] for o in outcomes.values())
    persisted = sum(o["mutation_persisted"] for o in outcomes.values())
    write_report(
        "AUD-6",
        {
            "failures_injected": len(outcomes),
            "mutations_without_event": without_event,
            "mutations_persisted": persisted,
            "control_mutation_audited": control,
            "cases": outcomes,
        },
        without_event == 0 and persisted == 0 and control,
    )
    assert without_event == 0 and persisted == 0, outcomes
    assert control


# --- AUD-2: bulk writes -------------------------------------------------------------------------------------


def _db_events(after_id: int) -> list[AuditEvent]:
    with platform_scope():
        return list(AuditEvent.all_tenants.filter(id__gt=after_id, action__startswith="db.row_").order_by("id"))


@pytest.mark.django_db
def test_aud2_bulk_writes_are_audited(
    tenant: Any, other_tenant: Any, member: Any, make_user: Any, api_key_for: Any, api_client_for: Any
) -> None:
    """Bulk and raw writes on every audited table family: tenancy, API keys, users, the dataset
    tables and data keys (capture triggers on datasets_* except datasets_uploadpart, and on
    vault_datakey; datasets_datasetversion is left out because ready versions are immutable), and
    training jobs and model versions (training_trainingjob ignores its bookkeeping columns
    progress, lease_owner, lease_until and event_seq; training_jobevent has no capture trigger)."""
    from decimal import Decimal

    from apps.datasets import services as dataset_services
    from apps.datasets.models import (
        BudgetReservation,
        Dataset,
        DatasetGrant,
        DatasetQuota,
        PrivacyBudget,
        UploadSession,
    )
    from apps.vault import services as vault_services
    from apps.vault.models import DataKey

    owner = member("owner")
    analysts = [member("analyst") for _ in range(3)]
    for _ in range(3):
        api_key_for(tenant)
    newcomers = [make_user() for _ in range(3)]
    with tenant_scope(tenant.pk):
        tenancy_services.invitation_create(
            tenant=tenant, actor_role=Role.OWNER, invited_by=owner, email="a@example.org", role=Role.ANALYST
        )
        tenancy_services.invitation_create(
            tenant=tenant, actor_role=Role.OWNER, invited_by=owner, email="b@example.org", role=Role.ANALYST
        )
    with tenant_scope(tenant.pk):
        datasets = [
            dataset_services.dataset_create(tenant=tenant, created_by=owner, name=f"aud2 {i}") for i in range(3)
        ]
        for ds in datasets:
            dataset_services.grant_create(
                tenant=tenant, dataset=ds, grantee=other_tenant, permission="process", created_by=owner
            )
            dataset_services.upload_session_create(
                tenant=tenant, dataset=ds, created_by=owner, filename="a.csv", size=10, options={}
            )
            dataset_services.budget_reserve(
                consumer=tenant,
                budget=PrivacyBudget.objects.get(dataset=ds),
                epsilon=Decimal("0.1"),
                delta=Decimal(0),
                purpose="aud2",
                reference="",
                created_by=owner,
            )
        vault_services.active_key(tenant.pk)
    # Training: three queued jobs and one job run to success (a model version) on a labelled,
    # de-identified version made through the API.
    from apps.training import services as training_services
    from apps.training.models import ModelVersion, TrainingJob
    from tests.apps.datasets.helpers import create_dataset, deidentify, table_csv, upload_version

    client = api_client_for(owner)
    train_ds = create_dataset(client, tenant.slug, "aud2 training")
    raw = upload_version(client, tenant.slug, train_ds, table_csv(12), label="outcome")
    deid = deidentify(client, tenant.slug, train_ds, raw["id"])
    spec = {"model": {"name": "logistic_regression", "params": {}}, "epochs": 1, "batch_size": 8}
    with tenant_scope(tenant.pk):
        jobs = [
            training_services.job_create(
                tenant=tenant, created_by=owner, name=f"aud2 job {i}", dataset_version_id=deid["id"], spec=spec
            )
            for i in range(4)
        ]
    assert training_services.run_job(tenant.pk, jobs[3].pk) == "succeeded"
    with platform_scope():
        baseline = AuditEvent.all_tenants.order_by("-id").values_list("id", flat=True).first()

    changed: dict[str, tuple[str, set[str]]] = {}  # operation -> (table, ids of the rows it changed)
    with tenant_scope(tenant.pk):
        ids = set(Membership.objects.filter(user__in=analysts).values_list("pk", flat=True))
        n = Membership.objects.filter(pk__in=ids).update(role=Role.AUDITOR)
        assert n == 3
        changed["queryset.update(memberships)"] = ("tenancy_membership", {str(i) for i in ids})

        created = Membership.objects.bulk_create(
            [Membership(tenant=tenant, user=u, role=Role.ANALYST) for u in newcomers]
        )
        changed["bulk_create(memberships)"] = ("tenancy_membership", {str(m.pk) for m in created})

        for m in created:
            m.role = Role.ADMIN
        assert Membership.objects.bulk_update(created, ["role"]) == 3
        changed["bulk_update(memberships)"] = ("tenancy_membership", {str(m.pk) for m in created})

        key_ids = sorted(ApiKey.objects.values_list("pk", flat=True))
        with connection.cursor() as cur:
            cur.execute("UPDATE accounts_apikey SET name = name || '-renamed' WHERE tenant_id = %s", [tenant.pk])
            assert cur.rowcount == 3
            changed["raw UPDATE(api keys)"] = ("accounts_apikey", {str(i) for i in key_ids})
            cur.execute("DELETE FROM accounts_apikey WHERE id = ANY(%s)", [key_ids[:2]])
            assert cur.rowcount == 2
            changed["raw DELETE(api keys)"] = ("accounts_apikey", {str(i) for i in key_ids[:2]})

        inv_ids = set(Invitation.objects.values_list("pk", flat=True))
        Invitation.objects.filter(pk__in=inv_ids).update(revoked_at=tenant.created_at)
        changed["queryset.update(invitations)"] = ("tenancy_invitation", {str(i) for i in inv_ids})
        Invitation.objects.filter(pk__in=inv_ids).delete()
        changed["queryset.delete(invitations)"] = ("tenancy_invitation", {str(i) for i in inv_ids})

        # A no-op update changes nothing and is not an event.
        Membership.objects.filter(pk__in=ids).update(role=Role.AUDITOR)

        ds_ids = {str(d.pk) for d in datasets}
        assert Dataset.objects.filter(pk__in=[d.pk for d in datasets]).update(description="bulk") == 3
        changed["queryset.update(datasets)"] = ("datasets_dataset", ds_ids)
        budgets = list(PrivacyBudget.objects.filter(dataset__in=datasets))
        for b in budgets:
            b.epsilon_total = Decimal("7")
        assert PrivacyBudget.objects.bulk_update(budgets, ["epsilon_total"]) == 3
        changed["bulk_update(budgets)"] = ("datasets_privacybudget", {str(b.pk) for b in budgets})
        quota = DatasetQuota.objects.bulk_create([DatasetQuota(tenant=tenant, max_datasets=9)])
        changed["bulk_create(quota)"] = ("datasets_datasetquota", {str(q.pk) for q in quota})
        grant_ids = sorted(DatasetGrant.objects.values_list("pk", flat=True))
        session_ids = sorted(UploadSession.objects.values_list("pk", flat=True))
        reservation_ids = sorted(BudgetReservation.objects.values_list("pk", flat=True))
        key_ids = sorted(DataKey.objects.values_list("pk", flat=True))
        with connection.cursor() as cur:
            cur.execute("UPDATE datasets_datasetgrant SET note = 'bulk' WHERE tenant_id = %s", [tenant.pk])
            assert cur.rowcount == 3
            changed["raw UPDATE(grants)"] = ("datasets_datasetgrant", {str(i) for i in grant_ids})
            cur.execute("UPDATE datasets_uploadsession SET filename = 'b.csv' WHERE tenant_id = %s", [tenant.pk])
            changed["raw UPDATE(upload sessions)"] = ("datasets_uploadsession", {str(i) for i in session_ids})
            cur.execute("UPDATE vault_datakey SET rewrapped_at = now() WHERE tenant_id = %s", [tenant.pk])
            changed["raw UPDATE(data keys)"] = ("vault_datakey", {str(i) for i in key_ids})
        BudgetReservation.objects.filter(pk__in=reservation_ids).update(reference="bulk")
        changed["queryset.update(reservations)"] = ("datasets_budgetreservation", {str(i) for i in reservation_ids})

        queued_ids = [j.pk for j in jobs[:3]]
        assert TrainingJob.objects.filter(pk__in=queued_ids).update(priority=5) == 3
        changed["queryset.update(training jobs)"] = ("training_trainingjob", {str(i) for i in queued_ids})
        queued = list(TrainingJob.objects.filter(pk__in=queued_ids))
        for j in queued:
            j.status_reason = "bulk"
        assert TrainingJob.objects.bulk_update(queued, ["status_reason"]) == 3
        changed["bulk_update(training jobs)"] = ("training_trainingjob", {str(i) for i in queued_ids})
        copy = TrainingJob.objects.bulk_create(
            [
                TrainingJob(
                    tenant=tenant,
                    name="aud2 bulk job",
                    dataset_version_id=deid["id"],
                    spec=jobs[0].spec,
                    spec_hash=jobs[0].spec_hash,
                )
            ]
        )
        changed["bulk_create(training job)"] = ("training_trainingjob", {str(j.pk) for j in copy})
        # Bookkeeping columns only (progress, lease, event counter): not an event.
        TrainingJob.objects.filter(pk__in=queued_ids).update(
            progress={"step": 1}, lease_owner="w", lease_until=tenant.created_at, event_seq=7
        )
        all_job_ids = sorted(TrainingJob.objects.values_list("pk", flat=True))
        model_ids = sorted(ModelVersion.objects.values_list("pk", flat=True))
        assert len(model_ids) == 1
        with connection.cursor() as cur:
            cur.execute("UPDATE training_trainingjob SET name = name || ' renamed' WHERE tenant_id = %s", [tenant.pk])
            assert cur.rowcount == len(all_job_ids) == 5
            changed["raw UPDATE(training jobs)"] = ("training_trainingjob", {str(i) for i in all_job_ids})
            cur.execute(
                "UPDATE training_modelversion SET metrics = metrics || '{\"bulk\": 1}'::jsonb WHERE tenant_id = %s",
                [tenant.pk],
            )
            assert cur.rowcount == 1
            changed["raw UPDATE(model versions)"] = ("training_modelversion", {str(i) for i in model_ids})
            cur.execute("DELETE FROM training_trainingjob WHERE id = %s", [copy[0].pk])
            assert cur.rowcount == 1
            changed["raw DELETE(training job)"] = ("training_trainingjob", {str(copy[0].pk)})
        ModelVersion.objects.filter(pk__in=model_ids).update(name="aud2 renamed model")
        changed["queryset.update(model versions)"] = ("training_modelversion", {str(i) for i in model_ids})

    with connection.cursor() as cur:  # platform table (users): the platform chain
        cur.execute("UPDATE accounts_user SET full_name = 'Bulk' WHERE id = ANY(%s)", [[u.pk for u in newcomers]])
        assert cur.rowcount == 3
        changed["raw UPDATE(users)"] = ("accounts_user", {str(u.pk) for u in newcomers})

    events = _db_events(baseline)
    rows_changed = sum(len(v[1]) for v in changed.values())
    got: dict[str, list[str]] = {}
    for e in events:
        got.setdefault(e.target_type, []).append(e.target_id)
    want: dict[str, list[str]] = {}
    for table, row_ids in changed.values():
        want.setdefault(table, []).extend(row_ids)
    matches = {t: sorted(got.get(t, [])) == sorted(want[t]) for t in want}
    chains_right = all(e.tenant_id == (None if e.target_type == "accounts_user" else tenant.pk) for e in events)
    ok_chain = audit_verify(tenant_id=tenant.pk).ok and audit_verify().ok
    write_report(
        "AUD-2",
        {
            "rows_changed": rows_changed,
            "audit_rows": len(events),
            "operations": len(changed),
            "rows_match_per_table": matches,
            "events_in_the_right_chain": chains_right,
            "chains_verify": ok_chain,
        },
        rows_changed == len(events) and all(matches.values()) and chains_right and ok_chain,
    )
    assert rows_changed == len(events), (changed, [(e.action, e.target_type, e.target_id) for e in events])
    assert all(matches.values()), (got, want)
    assert chains_right and ok_chain
    assert {e.action for e in events} == {"db.row_inserted", "db.row_updated", "db.row_deleted"}


# --- concurrency: one chain, many writers ------------------------------------------------------------------

THREADS = 12
PER_THREAD = 6


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_make_one_gap_free_chain(tenant: Any, make_user: Any) -> None:
    creator = make_user()
    chain = f"t{tenant.pk}"
    start = head_of(chain)[0]
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            for j in range(PER_THREAD):
                with tenant_scope(tenant.pk):
                    if j % 2:
                        account_services.api_key_create(
                            tenant=tenant, created_by=creator, name=f"k{i}-{j}", scopes=["read"], expires_at=None
                        )
                    else:
                        audit_record(action="test.concurrent", tenant=tenant, details={"thread": i, "n": j})
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    with tenant_scope(tenant.pk):
        seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
        prevs = list(AuditEvent.objects.values_list("prev_hash", flat=True))
    total = start + THREADS * PER_THREAD
    assert seqs == list(range(1, total + 1))  # unique and gap-free
    assert len(set(prevs)) == len(prevs)  # no two events claim the same predecessor: no fork
    assert head_of(chain)[0] == total
    result = audit_verify(tenant_id=tenant.pk)
    assert result.ok and result.num_events == total, result.problems
