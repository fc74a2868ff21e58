"""Audit Celery tasks called as functions (STYLE §8); retention check (AUD-8)."""

import psycopg
import pytest
from django.core.checks import run_checks

from apps.audit.models import AuditCheckpoint, AuditEvent
from apps.audit.tasks import audit_checkpoint_task, audit_tenant_verify_task
from apps.tenancy.scope import platform_scope, tenant_scope
from tests.conftest import write_report

pytestmark = pytest.mark.django_db


def test_tenant_verify_task_records_outcome_in_that_tenant(tenant, other_tenant):
    result = audit_tenant_verify_task.run(tenant_id=tenant.pk)
    assert result["ok"] is True
    with tenant_scope(tenant.pk):
        assert AuditEvent.objects.filter(action="audit.verified").count() == 1
    with tenant_scope(other_tenant.pk):
        assert AuditEvent.objects.filter(action="audit.verified").count() == 0


def test_task_needs_an_explicit_tenant():
    with pytest.raises(TypeError):
        audit_tenant_verify_task.run()


def test_checkpoint_task_signs_heads():
    audit_checkpoint_task.run()
    with platform_scope():
        assert AuditCheckpoint.objects.count() == 1
        assert AuditEvent.all_tenants.filter(action="audit.checkpoint_created", tenant=None).count() == 1


def test_retention_below_six_years_is_refused(settings):
    settings.COHORT_AUDIT_RETENTION_DAYS = 365
    assert any(e.id == "cohort.audit.E001" for e in run_checks())
    settings.COHORT_AUDIT_RETENTION_DAYS = 6 * 366
    assert not any(e.id == "cohort.audit.E001" for e in run_checks())


# --- AUD-8: a retention run deletes no record younger than the policy -------------------------------

# Ages of the seeded events, in days relative to the policy (negative: younger than the policy).
SEEDED_AGES = {"fresh": None, "one_day_younger": -1, "one_day_older": 1, "a_year_older": 365}
EVENTS_PER_AGE = 5


def _retention_deletes(retention_days: int) -> dict[str, str]:
    """What a retention job would run: the policy's cutoff, and a careless cutoff (every row before
    now) and a TRUNCATE, as every database role the processes hold (each connection alias)."""
    return {
        "policy_cutoff": f"DELETE FROM audit_auditevent WHERE created_at < now() - interval '{int(retention_days)} days'",
        "careless_cutoff": "DELETE FROM audit_auditevent WHERE created_at < now()",
        "truncate": "TRUNCATE audit_auditevent",
    }


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_aud8_retention_run_deletes_no_record_younger_than_policy(settings, tenant):
    from contextlib import nullcontext

    from django.db import DatabaseError, connections, transaction

    from apps.audit.services import audit_record
    from tests.security.helpers import admin_connect

    days = settings.COHORT_AUDIT_RETENTION_DAYS
    ids: dict[str, list[int]] = {}
    for age in SEEDED_AGES:
        with tenant_scope(tenant.pk):
            seqs = [
                audit_record(action="retention.probe", tenant=tenant, details={"age": age})
                for _ in range(EVENTS_PER_AGE)
            ]
        with admin_connect() as su:  # committed, as a later job would see them
            rows = su.execute(
                "SELECT id FROM audit_auditevent WHERE chain = %s AND seq = ANY(%s)", [f"t{tenant.pk}", seqs]
            ).fetchall()
        ids[age] = [r[0] for r in rows]
    # Age the seeded rows (the append function stamps the clock; only a superuser with triggers off
    # can back-date a row, which is how the test fabricates six-year-old events).
    with admin_connect() as su:
        su.execute("SET session_replication_role = replica")
        for age, offset in SEEDED_AGES.items():
            if offset is not None:
                su.execute(
                    "UPDATE audit_auditevent SET created_at = now() - make_interval(days => %s) WHERE id = ANY(%s)",
                    [days + offset, ids[age]],
                )
        su.execute("RESET session_replication_role")
        cutoff_split = su.execute(
            "SELECT count(*) FILTER (WHERE created_at >= now() - make_interval(days => %s)), count(*) "
            "FROM audit_auditevent WHERE id = ANY(%s)",
            [days, [i for v in ids.values() for i in v]],
        ).fetchone()

    seeded = [i for v in ids.values() for i in v]
    visible_sql = "SELECT count(*) FROM audit_auditevent WHERE id = ANY(%s)"
    attempts: list[dict[str, object]] = []
    for alias in settings.DATABASES:
        for name, statement in _retention_deletes(days).items():
            outcome: dict[str, object] = {"role": connections[alias].settings_dict["USER"], "alias": alias, "run": name}
            try:
                # The app role in the seeded tenant's scope (RLS shows it those rows); every other
                # alias logs in as its own role (platform, owner) and needs no setting.
                scope = tenant_scope(tenant.pk) if alias == "default" else nullcontext()
                with scope, transaction.atomic(using=alias), connections[alias].cursor() as cur:
                    cur.execute(visible_sql, [seeded])
                    outcome["seeded_rows_visible"] = cur.fetchone()[0]
                    cur.execute(statement)
                    outcome["rows_reported_deleted"] = cur.rowcount
            except DatabaseError as exc:
                outcome["refused"] = str(exc).splitlines()[0][:160]
            attempts.append(outcome)
        connections[alias].close()
    # No process holds a superuser DSN, but a job run with one (it sees every row, holds every
    # privilege) is the case the append-only trigger exists for.
    for name, statement in _retention_deletes(days).items():
        outcome = {"role": "superuser (triggers on)", "alias": None, "run": name}
        with admin_connect() as su:
            outcome["seeded_rows_visible"] = su.execute(visible_sql, [seeded]).fetchone()[0]
            try:
                with su.transaction():
                    outcome["rows_reported_deleted"] = su.execute(statement).rowcount
            except psycopg.Error as exc:
                outcome["refused"] = str(exc).splitlines()[0][:160]
        attempts.append(outcome)

    with admin_connect() as su:
        left = {
            age: su.execute("SELECT count(*) FROM audit_auditevent WHERE id = ANY(%s)", [v]).fetchone()[0]
            for age, v in ids.items()
        }
    deleted = {age: len(ids[age]) - left[age] for age in ids}
    younger = [a for a, off in SEEDED_AGES.items() if off is None or off < 0]
    older = [a for a in SEEDED_AGES if a not in younger]
    deleted_younger = sum(deleted[a] for a in younger)
    deleted_older = sum(deleted[a] for a in older)
    seeded_younger = sum(len(ids[a]) for a in younger)
    passed = deleted_younger == 0 and seeded_younger > 0 and cutoff_split[0] == seeded_younger and len(attempts) > 0
    write_report(
        "AUD-8",
        {
            "retention_days_configured": days,
            "records_seeded_younger_than_policy": seeded_younger,
            "records_seeded_older_than_policy": sum(len(ids[a]) for a in older),
            "records_deleted_younger_than_policy": deleted_younger,
            "records_deleted_older_than_policy": deleted_older,
            "deleted_by_age": deleted,
            "deletion_attempts": len(attempts),
            "deletion_attempts_refused": sum("refused" in a for a in attempts),
            "attempts": attempts,
            "purge_job": "none: the log is append-only (no process role may DELETE; the trigger refuses it even "
            "to a superuser), so the run is the deletion a purge job would issue, as every role the processes "
            "hold and as a superuser, counted afterwards by id",
        },
        passed,
    )
    assert seeded_younger and cutoff_split[0] == seeded_younger, cutoff_split
    assert deleted_younger == 0, (deleted, attempts)
