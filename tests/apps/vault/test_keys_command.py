"""``manage.py keys``: status, rotate-dek, and refusals with a clear error (non-zero exit)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from apps.audit.models import AuditEvent
from apps.tenancy.scope import platform_scope, tenant_scope
from apps.vault import services as vault
from apps.vault.models import DataKey

pytestmark = pytest.mark.django_db


def test_status_and_rotate_dek(tenant: Any) -> None:
    with tenant_scope(tenant.pk):
        first = vault.active_key(tenant.pk)
    out = io.StringIO()
    call_command("keys", "rotate-dek", "--tenant", tenant.slug, stdout=out)
    assert f"data key {first.pk} retired" in out.getvalue()
    status = io.StringIO()
    call_command("keys", "status", stdout=status)
    doc = json.loads(status.getvalue())
    mine = [k for k in doc["data_keys"] if k["tenant_id"] == tenant.pk]
    assert [k["status"] for k in mine] == ["retired", "active"]
    assert doc["current_kek"] in doc["keks"]
    with platform_scope():
        assert "key.retired" in AuditEvent.all_tenants.filter(tenant=tenant).values_list("action", flat=True)
        assert DataKey.all_tenants.filter(tenant=tenant, status="active").count() == 1


def test_shred_needs_confirmation_and_a_reason(tenant: Any) -> None:
    with pytest.raises(CommandError, match="--yes"):
        call_command("keys", "shred", "--tenant", tenant.slug, "--reason", "leaving the platform")
    with pytest.raises(CommandError, match="reason"):
        call_command("keys", "shred", "--tenant", tenant.slug, "--reason", "short", "--yes")
    with pytest.raises(CommandError, match="no tenant"):
        call_command("keys", "rotate-dek", "--tenant", "does-not-exist")


def test_rotate_kek_refuses_a_read_only_provider(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import os

    monkeypatch.setenv("COHORT_TEST_KEK", base64.b64encode(os.urandom(32)).decode())
    settings.COHORT_KEK = "env:COHORT_TEST_KEK"
    vault.reset_caches()
    try:
        with pytest.raises(CommandError, match="rotate it in your KMS"):
            call_command("keys", "rotate-kek")
    finally:
        settings.COHORT_KEK = ""
        vault.reset_caches()
