"""Audit API: list with filters, verify, export (itself audited), role checks."""

import pytest

pytestmark = pytest.mark.django_db


def test_auditor_lists_verifies_and_exports(tenant, member, api_client_for):
    owner = member("owner")
    auditor = member("auditor")
    c = api_client_for(owner)
    assert (
        c.post(f"/api/v1/tenants/{tenant.slug}/api-keys/", {"name": "k", "scopes": ["read"]}, format="json").status_code
        == 201
    )
    a = api_client_for(auditor)
    r = a.get(f"/api/v1/tenants/{tenant.slug}/audit-events/", {"action": "api_key.created"})
    assert r.status_code == 200, r.content
    events = r.json()["results"]
    assert [e["action"] for e in events] == ["api_key.created"]
    assert events[0]["actor_label"] == owner.email and events[0]["outcome"] == "success"
    v = a.post(f"/api/v1/tenants/{tenant.slug}/audit-events/verify/")
    assert v.status_code == 200 and v.json()["ok"] is True and v.json()["num_events"] >= 3, v.content
    ex = a.get(f"/api/v1/tenants/{tenant.slug}/audit-events/export/", {"file_format": "csv"})
    assert ex.status_code == 200 and ex["Content-Type"].startswith("text/csv")
    assert b"api_key.created" in ex.content
    r = a.get(f"/api/v1/tenants/{tenant.slug}/audit-events/", {"action": "audit.exported"})
    assert len(r.json()["results"]) == 1


def test_analyst_cannot_read_audit(tenant, member, api_client_for):
    analyst = member("analyst")
    r = api_client_for(analyst).get(f"/api/v1/tenants/{tenant.slug}/audit-events/")
    assert r.status_code == 403


def test_bodyless_endpoints_reject_a_body(tenant, member, api_client_for):
    auditor = api_client_for(member("auditor"))
    r = auditor.post(f"/api/v1/tenants/{tenant.slug}/audit-events/verify/", {"tenant_id": 1}, format="json")
    assert r.status_code == 400
    assert r.json()["error"]["fields"] == {"tenant_id": ["Unknown field."]}
    assert auditor.post("/api/v1/auth/logout/", {"all": True}, format="json").status_code == 400
    assert auditor.post(f"/api/v1/tenants/{tenant.slug}/audit-events/verify/").status_code == 200
