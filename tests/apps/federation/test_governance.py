"""Governance: a federation over granted datasets, owner approval of the digest it was shown
(expiring), k approvals to start, revocation, and the cross-tenant boundary (404 like missing)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.federation.models import Federation, FederationSite
from apps.tenancy.scope import tenant_scope
from tests.apps.federation.conftest import SPEC, approve_all, create_federation

pytestmark = pytest.mark.django_db(transaction=True)


def _fed(c: dict[str, Any], fed_id: int) -> Federation:
    with tenant_scope(c["lab"].pk):
        return Federation.objects.get(pk=fed_id)


def _actions(tenant: Any, prefix: str = "federation.") -> list[str]:
    with tenant_scope(tenant.pk):
        return list(
            AuditEvent.objects.filter(tenant_id=tenant.pk, action__startswith=prefix)
            .order_by("seq")
            .values_list("action", flat=True)
        )


def test_draft_invites_each_owner_and_needs_k_approvals_to_start(consortium: dict[str, Any]) -> None:
    c = consortium
    r = create_federation(c, min_sites=2)
    assert r.status_code == 201, r.content
    fed = r.json()
    assert fed["status"] == "draft" and fed["side"] == "coordinator" and fed["min_sites"] == 2
    start = f"/api/v1/tenants/{c['lab'].slug}/federations/{fed['id']}/start/"
    r = c["lab_client"].post(start)
    assert r.status_code == 409 and r.json()["error"]["code"] == "approvals_missing", r.content
    # Each hospital sees its own site, with the digest of what it is asked to approve.
    h = c["hospitals"][0]
    inbox = h["client"].get(f"/api/v1/tenants/{h['tenant'].slug}/federation-sites/").json()["results"]
    assert len(inbox) == 1 and inbox[0]["approval"] == "pending" and inbox[0]["coordinator"] == c["lab"].slug
    shown = inbox[0]["shown"]
    assert shown["spec_hash"] == fed["spec_hash"] and shown["strategy"]["name"] == "fedavg"
    assert shown["coordinator_sees"]["rows"] is False and shown["coordinator_sees"]["site_statistics"] is False
    assert "No row" in shown["leaves_the_site"]["round_0"]
    # A stale or made-up digest is refused.
    r = h["client"].post(
        f"/api/v1/tenants/{h['tenant'].slug}/federation-sites/{inbox[0]['id']}/approve/", {"digest": "0" * 64},
        format="json",
    )  # fmt: skip
    assert r.status_code == 409, r.content
    approve_all(c, fed["id"])
    assert _actions(h["tenant"]) == ["federation.site_invited", "federation.site_approved"]
    assert _actions(c["lab"])[:1] == ["federation.created"]
    assert _actions(c["lab"]).count("federation.site_approved") == 3


def test_the_coordinator_cannot_decide_for_an_owner(consortium: dict[str, Any]) -> None:
    """Even past the API: the lab may update the site rows naming it, never their approval."""
    c = consortium
    fed = create_federation(c).json()
    with tenant_scope(c["lab"].pk):
        site = FederationSite.all_tenants.filter(federation_id=fed["id"]).first()
        assert site is not None  # the coordinator sees the rows naming it (RLS coordinator clause)
    with pytest.raises(DatabaseError, match="only the dataset owner decides"), tenant_scope(c["lab"].pk):
        FederationSite.all_tenants.filter(pk=site.pk).update(approval="approved")
    with pytest.raises(DatabaseError, match="starts pending"), tenant_scope(c["lab"].pk):
        FederationSite.all_tenants.create(
            tenant_id=c["hospitals"][0]["tenant"].pk, federation_id=fed["id"], coordinator=c["lab"],
            dataset_id=c["hospitals"][0]["dataset"], label="site-9", approval="approved",
        )  # fmt: skip


def test_expired_approval_does_not_count(consortium: dict[str, Any]) -> None:
    c = consortium
    fed = create_federation(c, min_sites=3).json()
    soon = (timezone.now() + timedelta(seconds=2)).isoformat()
    approve_all(c, fed["id"], expires_at=soon)
    h = c["hospitals"][2]
    with tenant_scope(h["tenant"].pk):
        FederationSite.objects.filter(federation_id=fed["id"]).update(approval_expires_at=timezone.now())
    r = c["lab_client"].post(f"/api/v1/tenants/{c['lab'].slug}/federations/{fed['id']}/start/")
    assert r.status_code == 409, r.content
    assert r.json()["error"]["details"]["not_approved"] == {"site-3": "approved"}


def test_datasets_without_a_grant_or_missing_are_400(consortium: dict[str, Any]) -> None:
    c = consortium
    h = c["hospitals"][0]
    # Revoke hospital 1's grant: its dataset cannot be named any more (same answer as a missing one).
    r = h["client"].delete(f"/api/v1/tenants/{h['tenant'].slug}/datasets/{h['dataset']}/grants/{h['grant']['id']}/")
    assert r.status_code in (200, 204), r.content
    r = create_federation(c)
    assert r.status_code == 400 and "not found or not granted" in str(r.json()), r.content
    granted = [{"dataset_id": o["dataset"]} for o in c["hospitals"][1:]]
    body = {"name": "x", "spec": SPEC, "sites": [*granted, {"dataset_id": 999999}]}
    r = c["lab_client"].post(f"/api/v1/tenants/{c['lab'].slug}/federations/", body, format="json")
    assert r.status_code == 400 and "not found or not granted" in str(r.json()), r.content


def test_bad_spec_is_400_with_field_paths(consortium: dict[str, Any]) -> None:
    c = consortium
    bad = {**SPEC, "strategy": {"name": "krum", "params": {"f": 2}}, "rounds": 0}
    r = create_federation(c, spec=bad)
    assert r.status_code == 400, r.content
    fields = r.json()["error"]["fields"]
    assert "spec.rounds" in fields and "spec.strategy.params.f" in fields, fields


def test_other_tenants_federations_are_404(consortium: dict[str, Any], make_tenant: Any, member: Any,
                                            api_client_for: Any) -> None:  # fmt: skip
    from apps.tenancy.models import Role

    c = consortium
    fed = create_federation(c).json()
    stranger = make_tenant()
    client = api_client_for(member(Role.OWNER, tenant=stranger))
    for path in ("", "rounds/", "sites/", "events/"):
        r = client.get(f"/api/v1/tenants/{stranger.slug}/federations/{fed['id']}/{path}")
        assert r.status_code == 404, (path, r.content)
    r = client.post(f"/api/v1/tenants/{stranger.slug}/federations/{fed['id']}/start/")
    assert r.status_code == 404
    # A participant sees the federation but cannot start it (it is not theirs to run).
    h = c["hospitals"][0]
    r = h["client"].get(f"/api/v1/tenants/{h['tenant'].slug}/federations/{fed['id']}/")
    assert r.status_code == 200 and r.json()["side"] == "participant"
    r = h["client"].post(f"/api/v1/tenants/{h['tenant'].slug}/federations/{fed['id']}/start/")
    assert r.status_code == 404
    # Nor approve another hospital's site.
    other_site = c["hospitals"][1]
    inbox = other_site["client"].get(f"/api/v1/tenants/{other_site['tenant'].slug}/federation-sites/").json()
    r = h["client"].post(
        f"/api/v1/tenants/{h['tenant'].slug}/federation-sites/{inbox['results'][0]['id']}/approve/",
        {"digest": inbox["results"][0]["digest"]}, format="json",
    )  # fmt: skip
    assert r.status_code == 404
