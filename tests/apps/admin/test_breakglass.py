"""Break-glass: a reasoned, time-limited, audited read-only view of one tenant; no API key hashes anywhere."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.utils import timezone

from apps.accounts.models import ApiKey
from apps.tenancy.scope import tenant_scope
from tests.apps.admin.conftest import events

pytestmark = pytest.mark.django_db(transaction=True)

FORM_URL = "/admin/break-glass/"
REASON = "Customer ticket #123: members cannot log in"


def _page(tenant):
    return f"/admin/break-glass/{tenant.pk}/"


def test_breakglass_requires_a_reason_of_20_chars(staff_client, tenant):
    client, _ = staff_client()
    assert client.get(FORM_URL).status_code == 200
    r = client.post(FORM_URL, {"tenant": tenant.pk, "reason": "just looking around"})  # 19 characters
    assert r.status_code == 200 and "at least 20 characters" in r.content.decode()
    r = client.post(FORM_URL, {"tenant": tenant.pk, "reason": "    padded        short    "})
    assert r.status_code == 200
    assert events(action="breakglass.opened") == []
    r = client.get(_page(tenant))
    assert r.status_code == 302 and r["Location"] == f"{FORM_URL}?tenant={tenant.pk}"
    assert events(action="breakglass.viewed") == []


def test_breakglass_opens_audited_grant_and_every_view_is_audited(
    staff_client, tenant, other_tenant, member, api_key_for
):
    client, staff = staff_client()
    alice = member("owner", email="alice@hospital.example")
    secret = api_key_for(tenant)
    r = client.post(FORM_URL, {"tenant": tenant.pk, "reason": REASON})
    assert r.status_code == 302 and r["Location"] == _page(tenant)
    opened = events(action="breakglass.opened")
    assert len(opened) == 1
    e = opened[0]
    assert e.chain == f"t{tenant.pk}" and e.tenant_id == tenant.pk and e.actor_label == staff.email
    assert e.details_dict["reason"] == REASON and e.details_dict["staff_user_id"] == staff.pk
    assert e.details_dict["expires_at"] > timezone.now().isoformat()

    for n in range(1, 3):
        r = client.get(_page(tenant))
        assert r.status_code == 200
        html = r.content.decode()
        assert alice.email in html and secret.split("_")[1] in html and "breakglass.opened" in html
        assert len(events(action="breakglass.viewed", tenant_id=tenant.pk)) == n
    with tenant_scope(tenant.pk):
        key = ApiKey.objects.get()
    assert key.key_hash not in html and secret not in html
    # Nothing on the page writes.
    assert client.post(_page(tenant), {}).status_code == 405
    # The grant is for that tenant only.
    r = client.get(_page(other_tenant))
    assert r.status_code == 302
    assert events(action="breakglass.viewed", tenant_id=other_tenant.pk) == []


def test_expired_grant_redirects_to_the_form(staff_client, tenant, settings):
    client, _ = staff_client()
    client.post(FORM_URL, {"tenant": tenant.pk, "reason": REASON})
    session = client.session
    grants = session["cohort_breakglass"]
    grants[str(tenant.pk)]["expires_at"] = (timezone.now() - timedelta(seconds=1)).isoformat()
    session["cohort_breakglass"] = grants
    session.save()
    r = client.get(_page(tenant))
    assert r.status_code == 302 and r["Location"].startswith(FORM_URL)
    assert events(action="breakglass.viewed") == []


def test_api_key_hashes_never_appear_in_console_html(staff_client, tenant, other_tenant, api_key_for, member):
    client, staff = staff_client()
    member("owner")
    secrets_ = [api_key_for(tenant), api_key_for(other_tenant)]
    hashes = []
    for t in (tenant, other_tenant):
        with tenant_scope(t.pk):
            hashes += [k.key_hash for k in ApiKey.objects.all()]
    assert len(hashes) == 2
    client.post(FORM_URL, {"tenant": tenant.pk, "reason": REASON})
    pages = [
        "/admin/",
        FORM_URL,
        _page(tenant),
        "/admin/audit/auditevent/",
        "/admin/tenancy/tenant/",
        "/admin/tenancy/membership/",
        "/admin/accounts/user/",
        "/admin/otp_totp/totpdevice/",
    ]
    pages += [f"/admin/audit/auditevent/{e.pk}/change/" for e in events(action="api_key.created")]
    pages += [f"/admin/tenancy/tenant/{tenant.pk}/change/"]
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.get(user=staff)
    pages += [f"/admin/otp_totp/totpdevice/{device.pk}/change/"]
    for url in pages:
        r = client.get(url)
        assert r.status_code == 200, url
        html = r.content.decode()
        for value in [*hashes, *secrets_, device.key]:
            assert value not in html, url
    r = client.post(
        "/admin/audit/auditevent/", {"action": "export_csv", "index": 0, ACTION_CHECKBOX_NAME: [e.pk for e in events()]}
    )
    assert all(h not in r.content.decode() for h in hashes)
    # Tenant data tables have no console pages at all.
    assert client.get("/admin/accounts/apikey/").status_code == 404
    assert client.get("/admin/tenancy/invitation/").status_code == 404
