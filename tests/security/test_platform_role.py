"""ISO-12: no setting the app role can write widens its scope; the platform is a role, not a switch.

As ``cohort_app`` (a raw connection, as an SQL injection would have it), with tenant A's signed
context or none, every context setting the role can write is set to reach tenant B: the old
``app.platform`` switch, B's tenant id, B's user id, B's API-key prefix, without a MAC, with a
forged MAC, and with a genuine MAC minted for another backend (a replay). Then SELECT, INSERT,
UPDATE and DELETE run against B's rows of every tenant table: 0 rows seen, 0 changed. An unsigned
``app.audit_context`` does not mute row capture, and the app role cannot ``SET ROLE`` to the
platform. Positive controls: the platform role's own login sees B's rows, and the same statements
with B's genuinely signed context do too (so the MAC is the only difference).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.conf import settings

from apps.tenancy.rls import PLATFORM_ROLE
from apps.tenancy.scope import context_mac
from tests.conftest import write_report
from tests.processes import database_url, serving_login
from tests.security.helpers import admin_connect, app_connect, set_signed_context, tenant_tables
from tests.security.test_rls import _attempt, _seed_two_tenants

pytestmark = pytest.mark.django_db(transaction=True)


def _forgeries(pid: int, b: Any, b_user_id: int, b_prefix: str) -> dict[str, dict[str, str]]:
    """Name -> the raw settings (GUC -> value) an attacker writes, none of them MAC-valid here."""
    other_pid = pid + 1  # a genuine MAC for another session's backend (seen in pg_stat_activity)
    replay = context_mac(backend_pid=other_pid, name="tenant_id", value=str(b.pk))
    return {
        "platform_switch": {"app.platform": "on"},
        "tenant_unsigned": {"app.tenant_id": str(b.pk)},
        "tenant_forged_mac": {"app.tenant_id": str(b.pk), "app.tenant_id_mac": "0" * 64},
        "tenant_replayed_mac": {"app.tenant_id": str(b.pk), "app.tenant_id_mac": replay},
        "user_unsigned": {"app.user_id": str(b_user_id)},
        "lookup_unsigned": {"app.lookup_key": b_prefix},
        "everything": {
            "app.platform": "on",
            "app.tenant_id": str(b.pk),
            "app.tenant_id_mac": replay,
            "app.user_id": str(b_user_id),
            "app.lookup_key": b_prefix,
            "app.audit_context": "muted",
        },
    }


def _run(conn: psycopg.Connection, gucs: dict[str, str], sql: str, params: list[Any], signed_a: int | None) -> Any:
    """One statement in a transaction that is always rolled back: ('ok', rows) or (SQLSTATE, None)."""
    return _attempt(conn, signed_a, sql, params, raw_settings=gucs)


def test_iso12_no_setting_widens_the_app_role(
    make_tenant: Callable[..., Any],
    member: Callable[..., Any],
    api_key_for: Callable[..., str],
    api_client_for: Callable[[Any], Any],
) -> None:
    a, b = _seed_two_tenants(make_tenant, member, api_key_for, api_client_for)
    with admin_connect() as su:
        tables = tenant_tables(su)
        b_rows = {
            t: su.execute(f'SELECT count(*) FROM "{t}" WHERE tenant_id = %s', [b.pk]).fetchone()[0] for t in tables
        }
        samples = {
            t: (
                su.execute(f'SELECT to_jsonb(x) FROM "{t}" x WHERE tenant_id = %s LIMIT 1', [b.pk]).fetchone() or [None]
            )[0]
            for t in tables
        }
        b_user_id = su.execute(
            "SELECT user_id FROM tenancy_membership WHERE tenant_id = %s ORDER BY id LIMIT 1", [b.pk]
        ).fetchone()[0]
        b_prefix = su.execute("SELECT prefix FROM accounts_apikey WHERE tenant_id = %s LIMIT 1", [b.pk]).fetchone()[0]
        digest_sql = "SELECT md5(string_agg(to_jsonb(x)::text, '|' ORDER BY id)) FROM \"{t}\" x WHERE tenant_id = %s"
        before = {t: su.execute(digest_sql.format(t=t), [b.pk]).fetchone()[0] for t in tables}
    assert all(b_rows[t] > 0 for t in tables), {t: n for t, n in b_rows.items() if not n}

    attempts = rows_seen = rows_changed = refused = 0
    leaks: list[str] = []
    with app_connect(autocommit=True) as app:
        pid = app.info.backend_pid
        forgeries = _forgeries(pid, b, b_user_id, b_prefix)
        for t in tables:
            for name, gucs in forgeries.items():
                for signed_a in (None, a.pk):
                    where = f'"{t}" WHERE tenant_id = %s'
                    for verb, sql in (
                        ("SELECT", f"SELECT 1 FROM {where}"),
                        ("UPDATE", f"UPDATE {where.replace('WHERE', 'SET tenant_id = tenant_id WHERE')}"),
                        ("DELETE", f"DELETE FROM {where}"),
                    ):
                        state, n = _run(app, gucs, sql, [b.pk], signed_a)
                        attempts += 1
                        if state != "ok":
                            refused += 1
                        elif n:
                            if verb == "SELECT":
                                rows_seen += n
                            else:
                                rows_changed += n
                            leaks.append(f"{t} {verb} {name} signed_a={signed_a}: {n} rows")
                    if samples[t] is not None:
                        row = {**samples[t], "id": 9_000_000_000_000_001}
                        state, n = _run(
                            app,
                            gucs,
                            f'INSERT INTO "{t}" SELECT * FROM jsonb_populate_record(NULL::"{t}", %s::jsonb)',
                            [psycopg.types.json.Jsonb(row)],
                            signed_a,
                        )
                        attempts += 1
                        if state == "ok" and n:
                            rows_changed += n
                            leaks.append(f"{t} INSERT {name} signed_a={signed_a}: accepted")
                        elif state != "ok":
                            refused += 1

        # The app role cannot become the platform role.
        try:
            with app.transaction():
                app.execute(f"SET LOCAL ROLE {PLATFORM_ROLE}")
            set_role_refused = False
        except psycopg.Error:
            set_role_refused = True

        # An unsigned mute does not silence row capture: an update of A's own row is still captured.
        with admin_connect() as su:
            events_before = su.execute("SELECT count(*) FROM audit_auditevent WHERE tenant_id = %s", [a.pk]).fetchone()[
                0
            ]
        with app.transaction():
            set_signed_context(app, tenant_id=a.pk)
            app.execute("SELECT set_config('app.audit_context', 'muted', true)")
            changed = app.execute(
                "UPDATE tenancy_invitation SET role = role WHERE tenant_id = %s AND id = "
                "(SELECT min(id) FROM tenancy_invitation WHERE tenant_id = %s)",
                [a.pk, a.pk],
            ).rowcount
            app.execute(
                "UPDATE tenancy_membership SET role = 'auditor' WHERE id = "
                "(SELECT max(id) FROM tenancy_membership WHERE tenant_id = %s AND role = 'analyst')",
                [a.pk],
            )
        with admin_connect() as su:
            events_after = su.execute("SELECT count(*) FROM audit_auditevent WHERE tenant_id = %s", [a.pk]).fetchone()[
                0
            ]
        unsigned_mute_honoured = events_after == events_before
        assert changed == 1

        # Control 1: with B's genuinely signed context, the same connection sees B's rows.
        signed_b_seen = 0
        for t in tables:
            with app.transaction():
                set_signed_context(app, tenant_id=b.pk)
                signed_b_seen += len(app.execute(f'SELECT 1 FROM "{t}" WHERE tenant_id = %s', [b.pk]).fetchall())

    # Control 2: the platform role's own login reads every tenant's rows, and only reads where it
    # has no write policy.
    platform_db = serving_login(settings, "platform")
    assert platform_db["USER"] == PLATFORM_ROLE, "the suite runs with the platform role's own login"
    platform_seen: dict[str, int] = {}
    with psycopg.connect(database_url(platform_db), autocommit=True) as plat:
        for t in tables:
            platform_seen[t] = plat.execute(f'SELECT count(*) FROM "{t}" WHERE tenant_id = %s', [b.pk]).fetchone()[0]
        state, n = _run(plat, {}, 'DELETE FROM "datasets_dataset" WHERE tenant_id = %s', [b.pk], None)
        platform_delete_rows = n if state == "ok" else 0

    with admin_connect() as su:
        after = {t: su.execute(digest_sql.format(t=t), [b.pk]).fetchone()[0] for t in tables}
    changed_tables = [t for t in tables if after[t] != before[t]]

    figures = {
        "tables": len(tables),
        "forgeries": sorted(forgeries),
        "attempts": attempts,
        "refused_with_error": refused,
        "rows_seen": rows_seen,
        "rows_changed": rows_changed,
        "tables_changed": changed_tables,
        "leaks": leaks[:50],
        "set_role_to_platform_refused": set_role_refused,
        "unsigned_audit_mute_honoured": unsigned_mute_honoured,
        "control_signed_b_rows_seen": signed_b_seen,
        "control_platform_rows_seen": sum(platform_seen.values()),
        "control_b_rows": sum(b_rows.values()),
        "platform_delete_on_read_only_table_rows": platform_delete_rows,
    }
    passed = (
        rows_seen == 0
        and rows_changed == 0
        and not changed_tables
        and set_role_refused
        and not unsigned_mute_honoured
        and signed_b_seen == sum(b_rows.values())
        and platform_seen == b_rows
        and platform_delete_rows == 0
    )
    write_report("ISO-12", figures, passed)
    assert not leaks, leaks
    assert not changed_tables
    assert set_role_refused
    assert not unsigned_mute_honoured
    assert signed_b_seen == sum(b_rows.values())
    assert platform_seen == b_rows
    assert platform_delete_rows == 0


@pytest.mark.django_db(transaction=True, databases=["default", "platform"])
def test_platform_scope_is_its_own_login_and_connection(settings: Any, make_tenant: Callable[..., Any]) -> None:
    """Production wiring (no shared test connection): platform scope runs on the ``platform``
    alias as ``cohort_platform``; a tenant scope inside it goes back to the app connection; the
    scheduler, called inside an open app transaction, runs after its commit instead of waiting on
    that transaction's locks from its own connection."""
    from django.db import connections, transaction

    from apps.tenancy.scope import db_alias, platform_scope, tenant_scope
    from apps.training import scheduler

    settings.COHORT_PLATFORM_SHARED_CONNECTION = False
    tenant = make_tenant()
    with platform_scope():
        assert db_alias() == "platform"
        with connections[db_alias()].cursor() as cur:
            cur.execute("SELECT session_user, current_user, cohort_platform()")
            platform_login = cur.fetchone()
        with tenant_scope(tenant.pk):
            assert db_alias() == "default"
            with connections["default"].cursor() as cur:
                cur.execute("SELECT cohort_platform(), cohort_tenant_id()")
                inner = cur.fetchone()
        assert db_alias() == "platform"
    assert platform_login == (PLATFORM_ROLE, PLATFORM_ROLE, True)
    assert inner == (False, tenant.pk)

    ran: list[scheduler.Pass] = []
    with transaction.atomic():
        deferred = scheduler.schedule()
        real = scheduler.schedule
        transaction.on_commit(lambda: ran.append(real()))
    assert deferred.deferred
    assert ran and not ran[0].deferred
