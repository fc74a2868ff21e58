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
    assert "training loss and metrics" in shown["leaves_the_site"]["training_rounds"]
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


def test_local_dp_start_reserves_the_projection_on_every_ledger_or_nothing(consortium: dict[str, Any]) -> None:
    """Local DP: start reserves each dataset's projected ε (Opacus' accountant over all rounds)
    within the lab's grant allotment; a shortfall anywhere is a 422 naming that dataset and
    nothing is reserved or started; cancel before any update left a site releases every hold."""
    from decimal import Decimal

    from apps.datasets.models import DatasetGrant
    from workers.federated.spec import FederationSpec, projected_epsilon

    c = consortium
    spec = {**SPEC, "train": {**SPEC["train"], "epochs": 1}, "local_steps": 5,
            "dp": {"mode": "local", "target_epsilon": 2.0, "delta": 1e-5}}  # fmt: skip
    r = create_federation(c, spec=spec)
    assert r.status_code == 201, r.content
    fed = r.json()
    shown = approve_all(c, fed["id"])[0]["shown"]["leaves_the_site"]["training_rounds"]
    assert "no training loss" in shown and "DP accounting" in shown  # the owner is told what leaves
    start = f"/api/v1/tenants/{c['lab'].slug}/federations/{fed['id']}/start/"
    first = c["hospitals"][0]
    r = c["lab_client"].post(start)  # no budget on any dataset yet
    assert r.status_code == 422 and r.json()["error"]["code"] == "budget_exceeded", r.content
    assert r.json()["error"]["details"]["dataset_id"] == first["dataset"]
    for h in c["hospitals"]:
        base = f"/api/v1/tenants/{h['tenant'].slug}/datasets/{h['dataset']}/budget/"
        assert h["client"].put(base, {"epsilon": "10", "delta": "0.001"}, format="json").status_code == 200
        with tenant_scope(h["tenant"].pk):
            DatasetGrant.objects.filter(pk=h["grant"]["id"]).update(
                epsilon_allotment=Decimal("1") if h is c["hospitals"][2] else Decimal("5"),
                delta_allotment=Decimal("0.001"),
            )
    r = c["lab_client"].post(start)  # the third hospital's allotment (ε 1) is short of the projection
    assert r.status_code == 422 and r.json()["error"]["details"]["dataset_id"] == c["hospitals"][2]["dataset"], (
        r.content
    )
    assert r.json()["error"]["details"]["cause"] == "allotment_exceeded"
    assert _held(c, fed["id"]) == []
    assert _fed(c, fed["id"]).status == "draft"
    with tenant_scope(c["hospitals"][2]["tenant"].pk):
        DatasetGrant.objects.filter(pk=c["hospitals"][2]["grant"]["id"]).update(epsilon_allotment=Decimal("5"))
    r = c["lab_client"].post(start)
    assert r.status_code == 200, r.content
    fspec = FederationSpec.from_dict(_fed(c, fed["id"]).spec)
    held = {res.budget.dataset_id: res for res in _held(c, fed["id"])}
    assert set(held) == {h["dataset"] for h in c["hospitals"]}
    for h in c["hospitals"]:
        res = held[h["dataset"]]
        rows = int(h["version"]["rows"])
        assert res.state == "reserved" and res.delta == Decimal("0.00001")
        assert float(res.epsilon) == pytest.approx(projected_epsilon(fspec, n_rows=rows), abs=1e-6)
        assert 0 < float(res.epsilon) <= 2.0
    r = c["lab_client"].post(f"/api/v1/tenants/{c['lab'].slug}/federations/{fed['id']}/cancel/")
    assert r.status_code == 200, r.content
    states = {res.state for res in _held(c, fed["id"])}
    assert states == {"released"}


def _held(c: dict[str, Any], fed_id: int) -> list[Any]:
    """The federation's reservations, read in each owner's scope (the ledger is the owner's)."""
    from apps.datasets.models import BudgetReservation

    out: list[Any] = []
    for h in c["hospitals"]:
        with tenant_scope(h["tenant"].pk):
            out += BudgetReservation.objects.filter(reference__startswith=f"federation:{fed_id}:").select_related(
                "budget"
            )
    return out
