"""First end-to-end checks through the API with real PostgreSQL RLS."""

import pytest

pytestmark = pytest.mark.django_db


def test_member_lists_members_and_outsider_gets_404(tenant, other_tenant, member, api_client_for):
    owner = member("owner")
    outsider = member("owner", tenant=other_tenant)
    r = api_client_for(owner).get(f"/api/v1/tenants/{tenant.slug}/members/")
    assert r.status_code == 200, r.content
    assert [m["email"] for m in r.json()["results"]] == [owner.email]
    r2 = api_client_for(outsider).get(f"/api/v1/tenants/{tenant.slug}/members/")
    r3 = api_client_for(outsider).get("/api/v1/tenants/no-such-tenant/members/")
    assert r2.status_code == r3.status_code == 404
    assert r2.json() == r3.json() == {"error": {"code": "not_found", "message": "Not found."}}
