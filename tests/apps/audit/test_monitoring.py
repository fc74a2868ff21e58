"""Scheduled verification of every chain (``audit.verify_all``): the platform event, /readyz and the
console banner, for an intact log and a tampered one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache

from apps.audit.models import AuditEvent
from apps.audit.status import ACTOR_LABEL, STATUS_CACHE_KEY
from apps.audit.tasks import audit_verify_all_task
from apps.tenancy.scope import platform_scope
from tests.security.helpers import admin_connect

TAMPERED_DETAILS = '{"fixture":"tampered-canary"}'


@pytest.fixture(autouse=True)
def _no_cached_status() -> Iterator[None]:
    """The status lives in Redis across tests: start and end without one."""
    cache.delete(STATUS_CACHE_KEY)
    yield
    cache.delete(STATUS_CACHE_KEY)


def platform_events(action: str) -> list[AuditEvent]:
    with platform_scope():
        return list(AuditEvent.all_tenants.filter(action=action, tenant=None, actor_label=ACTOR_LABEL).order_by("id"))


def tamper_event(chain: str, seq: int) -> int:
    """Edit one committed event as a superuser with the append-only triggers off (what an attacker
    with database credentials could do); returns its id."""
    with admin_connect() as su:
        su.execute("SET session_replication_role = replica")
        row = su.execute(
            "UPDATE audit_auditevent SET details = %s WHERE chain = %s AND seq = %s RETURNING id",
            [TAMPERED_DETAILS, chain, seq],
        ).fetchone()
        su.execute("RESET session_replication_role")
    assert row is not None
    return int(row[0])


def console_client(client: Any, make_user: Any, settings: Any) -> Any:
    settings.COHORT_REQUIRE_ADMIN_OTP = False  # the OTP login itself is tested in tests/apps/admin
    client.force_login(make_user(is_staff=True))
    return client


@pytest.mark.django_db
def test_intact_chains_are_ok_everywhere(tenant: Any, other_tenant: Any, member: Any, client: Any) -> None:
    member("owner")
    status = audit_verify_all_task()
    assert status["ok"] is True and status["broken_chains"] == []
    assert status["num_chains"] >= 3 and status["num_events"] >= 3
    [event] = platform_events("audit.verified")
    assert event.outcome == "success" and event.details_dict["ok"] is True
    assert event.details_dict["problems"] == [] and event.details_dict["scope"] == "all"
    assert platform_events("audit.chain_broken") == []
    r = client.get("/readyz")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["status"] == "ok"
    assert body["checks"]["audit_chain"] == {
        "ok": True,
        "checked_at": status["checked_at"],
        "broken_chains": [],
        "stale": False,
    }


@pytest.mark.django_db
def test_readyz_before_any_verification(client: Any) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200, r.content
    assert r.json()["checks"]["audit_chain"]["ok"] is None


@pytest.mark.django_db
def test_console_banner_when_intact(client: Any, make_user: Any, settings: Any, tenant: Any) -> None:
    console = console_client(client, make_user, settings)
    assert b"No scheduled verification recorded yet" in console.get("/admin/").content
    audit_verify_all_task()
    page = console.get("/admin/").content.decode()
    assert "Every chain verified intact" in page and "tampering" not in page


@pytest.mark.django_db(transaction=True)
def test_tampered_chain_is_a_platform_event_readyz_503_and_a_console_banner(
    tenant: Any, other_tenant: Any, member: Any, client: Any, make_user: Any, settings: Any
) -> None:
    for role in ("analyst", "auditor"):
        member(role)
    chain = f"t{tenant.pk}"
    victim = tamper_event(chain, 2)

    status = audit_verify_all_task()
    assert status["ok"] is False and status["broken_chains"] == [chain]

    [event] = platform_events("audit.chain_broken")
    assert event.outcome == "error" and event.tenant_id is None and event.chain == "platform"
    details = event.details_dict
    assert details["broken_chains"] == [chain]
    assert [(p["chain"], p["seq"], p["kind"], p["event_id"]) for p in details["problems"]] == [
        (chain, 2, "hash_mismatch", victim)
    ]
    assert "tampered-canary" not in event.details  # positions only, never an event's contents
    assert platform_events("audit.verified") == []

    r = client.get("/readyz")
    assert r.status_code == 503, r.content
    body = r.json()
    assert body["status"] == "tampered"
    assert body["checks"]["audit_chain"]["ok"] is False
    assert body["checks"]["audit_chain"]["broken_chains"] == [chain]
    assert all(body["checks"][k]["ok"] for k in ("database", "redis", "broker"))

    # The Redis copy is only a cache: without it /readyz reads the platform event.
    cache.delete(STATUS_CACHE_KEY)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["audit_chain"]["broken_chains"] == [chain]

    settings.COHORT_AUDIT_TAMPER_FAILS_READYZ = False  # report only
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["checks"]["audit_chain"]["ok"] is False

    console = console_client(client, make_user, settings)
    page = console.get("/admin/").content.decode()
    assert "Audit log tampering detected" in page and chain in page
    listing = console.get("/admin/audit/auditevent/").content.decode()
    assert "Audit log tampering detected by the scheduled verification" in listing


@pytest.mark.django_db(transaction=True)
def test_a_forged_stored_checkpoint_is_tampering(tenant: Any) -> None:
    from apps.audit.verification import checkpoint_create

    checkpoint_create()
    assert audit_verify_all_task()["checkpoint"]["used"] is True
    with admin_connect() as su:
        payload = json.loads(su.execute("SELECT payload FROM audit_auditcheckpoint ORDER BY id DESC").fetchone()[0])
        payload["chains"][f"t{tenant.pk}"] = [1, "0" * 64]
        su.execute("SET session_replication_role = replica")  # the append-only trigger off
        su.execute(
            "UPDATE audit_auditcheckpoint SET payload = %s WHERE id = (SELECT max(id) FROM audit_auditcheckpoint)",
            [json.dumps(payload, sort_keys=True, separators=(",", ":"))],
        )
    status = audit_verify_all_task()
    assert status["ok"] is False and status["broken_chains"] == ["checkpoints"]
    assert status["checkpoint"]["used"] is False and status["checkpoint"]["forged"] is True
