"""AUD-7: no API key secret, invitation token or password reaches the logs (every logger, DEBUG,
SQL included) or any field of any audit event."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.db import connections

from apps.audit.models import AuditEvent
from apps.tenancy.scope import platform_scope
from tests.conftest import write_report

PASSWORD = "Canary-Passw0rd-7f3a9c1e"
WRONG_PASSWORD = "Canary-Wr0ng-Pass-b1d2e4"
NEW_PASSWORD = "Canary-N3w-Passw0rd-5c8d"
FAKE_KEY = "coh_zzzzcanary01_" + "CanaryKeySecret" + "x" * 28
FAKE_TOKEN = "inv_CanaryInvitationToken-9e8d7c6b5a"
CONTROL = "Canary-Control-0000"  # logged on purpose: proves the capture sees what it should


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.__dict__))
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


def _audit_text() -> str:
    columns = [f.attname for f in AuditEvent._meta.concrete_fields]
    with platform_scope():
        rows = AuditEvent.all_tenants.order_by("id").values_list(*columns)
        return "\n".join("\x1f".join("" if v is None else str(v) for v in row) for row in rows)


@pytest.mark.django_db
def test_aud7_no_secrets_in_logs_or_audit(
    tenant: Any,
    member: Any,
    make_user: Any,
    api_client_for: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: everything that propagates
    for name in ("django.db.backends", "django.request", "django.security", "apps.api"):
        caplog.set_level(logging.DEBUG, logger=name)
    for logger in logging.Logger.manager.loggerDict.values():  # and loggers that do not propagate
        if isinstance(logger, logging.Logger) and not logger.propagate:
            monkeypatch.setattr(logger, "handlers", [*logger.handlers, caplog.handler])
    monkeypatch.setattr(connections["default"], "force_debug_cursor", True)  # log every SQL statement + params
    logging.getLogger("apps.canary").debug("control %s", CONTROL)

    owner = member("owner", password=PASSWORD)
    c = api_client_for(owner)
    base = f"/api/v1/tenants/{tenant.slug}"
    secrets: dict[str, str] = {
        "password": PASSWORD,
        "wrong_password": WRONG_PASSWORD,
        "new_password": NEW_PASSWORD,
        "fake_key": FAKE_KEY,
        "fake_key_secret": FAKE_KEY[17:],
        "fake_token": FAKE_TOKEN,
    }

    # API keys: created (the secret is in the response only), used, used forged, revoked.
    for i in range(2):
        r = c.post(f"{base}/api-keys/", {"name": f"canary{i}", "scopes": ["read", "write"]}, format="json")
        assert r.status_code == 201, r.content
        key = r.json()["key"]
        secrets[f"api_key_{i}"] = key
        secrets[f"api_key_{i}_secret"] = key.split("_", 2)[2]
    keyed = api_client_for(secrets["api_key_0"])
    assert keyed.get(f"{base}/").status_code == 200
    assert api_client_for(FAKE_KEY).get(f"{base}/").status_code == 401
    secrets["api_key_1_altered"] = secrets["api_key_1"][:-1] + ("Z" if secrets["api_key_1"][-1] != "Z" else "Y")
    assert api_client_for(secrets["api_key_1_altered"]).get(f"{base}/").status_code == 401

    # Invitations: created (token in the response only), accepted, and a forged token refused.
    invitee = make_user(password=PASSWORD)
    for i, email in enumerate((invitee.email, "someone@example.org")):
        r = c.post(f"{base}/invitations/", {"email": email, "role": "analyst"}, format="json")
        assert r.status_code == 201, r.content
        secrets[f"invitation_token_{i}"] = r.json()["token"]
    ic = api_client_for(invitee)
    assert (
        ic.post("/api/v1/invitations/accept/", {"token": secrets["invitation_token_0"]}, format="json").status_code
        == 201
    )
    assert ic.post("/api/v1/invitations/accept/", {"token": FAKE_TOKEN}, format="json").status_code == 404

    # Logins: success, wrong password, unknown user, malformed body; a user created with a password.
    anon = api_client_for(None)
    anon.credentials(HTTP_X_CSRFTOKEN=anon.get("/api/v1/auth/csrf/").json()["csrf_token"])
    for email, password, status in (
        (owner.email, WRONG_PASSWORD, 401),
        ("nobody@example.org", WRONG_PASSWORD, 401),
        (owner.email, PASSWORD, 200),
    ):
        r = anon.post("/api/v1/auth/login/", {"email": email, "password": password}, format="json")
        assert r.status_code == status, r.content
    bad = api_client_for(None)
    bad.credentials(HTTP_X_CSRFTOKEN=bad.get("/api/v1/auth/csrf/").json()["csrf_token"])
    assert (
        bad.post(
            "/api/v1/auth/login/",
            {"email": "not-an-email", "password": WRONG_PASSWORD, "extra": NEW_PASSWORD},
            format="json",
        ).status_code
        == 400
    )
    from apps.accounts.services import user_create

    user_create(email="created@example.org", password=NEW_PASSWORD)

    logs, audit = _log_text(caplog), _audit_text()
    hits = [
        f"{name} in {where}"
        for name, value in secrets.items()
        for where, text in (("logs", logs), ("audit", audit))
        if value in text
    ]
    figures = {
        "canary_hits": len(hits),
        "hits": hits,
        "canaries": len(secrets),
        "log_records": len(caplog.records),
        "sql_statements_logged": sum(r.name == "django.db.backends" for r in caplog.records),
        "audit_events_scanned": audit.count("\n") + 1,
        "control_canary_found": CONTROL in logs,
    }
    write_report("AUD-7", figures, not hits and figures["control_canary_found"])
    assert figures["control_canary_found"] and figures["sql_statements_logged"] > 50, figures
    assert hits == [], hits
