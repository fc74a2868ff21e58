"""Console model admins: audit events read-only across tenants, verify/export, tenant and member actions."""

from __future__ import annotations

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

from apps.tenancy.models import Membership, Tenant
from apps.tenancy.scope import platform_scope
from tests.apps.admin.conftest import events

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS_URL = "/admin/audit/auditevent/"


def test_staff_lists_audit_events_across_tenants(staff_client, tenant, other_tenant):
    client, _ = staff_client()
    r = client.get(EVENTS_URL)
    assert r.status_code == 200
    html = r.content.decode()
    assert tenant.slug in html and other_tenant.slug in html and "tenant.created" in html
    # The "action" filter's choices are read while the template renders: still in platform scope.
    assert "?action=tenant.created" in html and "?action=auth.login" in html
    r = client.get(EVENTS_URL, {"tenant__id__exact": other_tenant.pk})
    assert r.status_code == 200
    rows = r.context["cl"].result_list
    assert rows and {e.tenant_id for e in rows} == {other_tenant.pk}
    r = client.get(
        EVENTS_URL, {"q": "tenant.created", "outcome__exact": "success", "created_at__gte": "2000-01-01 00:00:00+00:00"}
    )
    assert r.status_code == 200 and len(r.context["cl"].result_list) >= 2


def test_audit_events_cannot_be_added_changed_or_deleted(staff_client, tenant):
    client, _ = staff_client()
    event = events(tenant_id=tenant.pk)[0]
    r = client.get(f"{EVENTS_URL}{event.pk}/change/")
    assert r.status_code == 200
    html = r.content.decode()
    assert event.hash in html and 'name="_save"' not in html
    assert client.get(f"{EVENTS_URL}add/").status_code == 403
    assert client.post(f"{EVENTS_URL}{event.pk}/change/", {"action": "x"}).status_code == 403
    assert client.get(f"{EVENTS_URL}{event.pk}/delete/").status_code == 403
    assert client.post(f"{EVENTS_URL}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    r = client.post(EVENTS_URL, {"action": "delete_selected", ACTION_CHECKBOX_NAME: [event.pk], "index": 0})
    assert events(tenant_id=tenant.pk)[0].pk == event.pk
    actions = [value for value, _ in client.get(EVENTS_URL).context["action_form"].fields["action"].choices]
    assert "delete_selected" not in actions and {"verify_chain", "export_csv"} <= set(actions)


def test_verify_action_reports_ok_and_is_audited(staff_client, tenant, other_tenant):
    client, user = staff_client()
    selected = [e.pk for e in events(tenant_id=tenant.pk)]
    r = client.post(EVENTS_URL, {"action": "verify_chain", ACTION_CHECKBOX_NAME: selected, "index": 0}, follow=True)
    assert r.status_code == 200
    assert "Hash chain OK" in r.content.decode() and "1 tenant chain(s)" in r.content.decode()
    platform_event = events(action="auth.login")[0]
    r = client.post(
        EVENTS_URL, {"action": "verify_chain", ACTION_CHECKBOX_NAME: [platform_event.pk], "index": 0}, follow=True
    )
    assert "Hash chain OK" in r.content.decode() and "every chain" in r.content.decode()
    verified = events(action="audit.verified")
    assert len(verified) == 2 and all(e.chain == "platform" and e.actor_label == user.email for e in verified)
    assert verified[0].details_dict["tenant_ids"] == [tenant.pk] and verified[1].details_dict["scope"] == "all"


def test_export_csv_action_is_audited(staff_client, tenant):
    client, user = staff_client()
    selected = [e.pk for e in events(tenant_id=tenant.pk)]
    r = client.post(
        f"{EVENTS_URL}?tenant__id__exact={tenant.pk}",
        {"action": "export_csv", ACTION_CHECKBOX_NAME: selected, "index": 0},
    )
    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
    lines = r.content.decode().strip().splitlines()
    assert lines[0].startswith("id,chain,seq") and len(lines) == len(selected) + 1
    exported = events(action="audit.exported")
    assert len(exported) == 1
    e = exported[0]
    assert e.chain == "platform" and e.tenant_id is None and e.actor_label == user.email
    assert e.details_dict["num_events"] == len(selected)
    assert e.details_dict["filters"] == {"tenant__id__exact": str(tenant.pk)}


def test_suspend_and_reactivate_actions_use_the_audited_service(staff_client, tenant, other_tenant):
    client, user = staff_client()
    url = "/admin/tenancy/tenant/"
    r = client.post(url, {"action": "suspend_tenants", ACTION_CHECKBOX_NAME: [tenant.pk], "index": 0})
    assert r.status_code == 200 and "reason" in r.content.decode()  # the intermediate page asks for a reason
    r = client.post(
        url, {"action": "suspend_tenants", ACTION_CHECKBOX_NAME: [tenant.pk], "apply": "Suspend", "reason": "short"}
    )
    assert r.status_code == 200
    with platform_scope():
        assert Tenant.objects.get(pk=tenant.pk).status == "active"
    r = client.post(
        url,
        {
            "action": "suspend_tenants",
            ACTION_CHECKBOX_NAME: [tenant.pk],
            "apply": "Suspend",
            "reason": "Fraud investigation #4711",
        },
    )
    assert r.status_code == 302
    with platform_scope():
        t = Tenant.objects.get(pk=tenant.pk)
        assert (t.status, t.suspended_reason) == ("suspended", "Fraud investigation #4711")
        assert Tenant.objects.get(pk=other_tenant.pk).status == "active"
    suspended = events(action="tenant.suspended")
    assert len(suspended) == 1
    assert suspended[0].chain == f"t{tenant.pk}" and suspended[0].actor_label == user.email
    assert suspended[0].details_dict == {"reason": "Fraud investigation #4711"}
    assert events(action="db.row_updated", target_type="tenancy_tenant") == []
    # Suspending again changes nothing and records nothing.
    client.post(
        url,
        {
            "action": "suspend_tenants",
            ACTION_CHECKBOX_NAME: [tenant.pk],
            "apply": "Suspend",
            "reason": "Fraud investigation #4711",
        },
    )
    assert len(events(action="tenant.suspended")) == 1
    r = client.post(
        url,
        {
            "action": "reactivate_tenants",
            ACTION_CHECKBOX_NAME: [tenant.pk],
            "apply": "Reactivate",
            "reason": "Investigation closed, no fraud",
        },
    )
    assert r.status_code == 302
    assert len(events(action="tenant.reactivated")) == 1
    assert client.get(f"{url}{tenant.pk}/delete/").status_code == 403
    assert client.get(f"{url}add/").status_code == 403


def test_membership_actions_go_through_services(staff_client, tenant, member):
    client, user = staff_client()
    member("owner")
    analyst = member("analyst")
    with platform_scope():
        m = Membership.all_tenants.get(user=analyst)
    url = "/admin/tenancy/membership/"
    r = client.get(url)
    assert r.status_code == 200 and analyst.email in r.content.decode()
    r = client.post(url, {"action": "change_role", ACTION_CHECKBOX_NAME: [m.pk], "apply": "1", "role": "auditor"})
    assert r.status_code == 302
    changed = events(action="member.role_changed")
    assert len(changed) == 1 and changed[0].actor_label == user.email and changed[0].chain == f"t{tenant.pk}"
    assert changed[0].details_dict["to"] == "auditor"
    r = client.post(url, {"action": "remove_memberships", ACTION_CHECKBOX_NAME: [m.pk], "apply": "1"})
    assert r.status_code == 302
    assert len(events(action="member.removed")) == 1
    with platform_scope():
        assert not Membership.all_tenants.filter(pk=m.pk).exists()
    assert events(action__startswith="db.row_") == []


def test_last_owner_cannot_be_removed_from_the_console(staff_client, tenant, member):
    client, _ = staff_client()
    owner = member("owner")
    with platform_scope():
        m = Membership.all_tenants.get(user=owner)
    r = client.post(
        "/admin/tenancy/membership/",
        {"action": "remove_memberships", ACTION_CHECKBOX_NAME: [m.pk], "apply": "1"},
        follow=True,
    )
    assert "at least one owner" in r.content.decode()
    assert events(action="member.removed") == []


def test_user_admin_never_shows_password_hashes(staff_client, make_user):
    client, staff = staff_client()
    user = make_user()
    r = client.get("/admin/accounts/user/")
    assert r.status_code == 200 and user.email in r.content.decode()
    r = client.get(f"/admin/accounts/user/{user.pk}/change/")
    assert r.status_code == 200
    assert user.password not in r.content.decode() and "md5$" not in r.content.decode()
    r = client.get("/admin/otp_totp/totpdevice/")
    assert r.status_code == 200 and staff.email in r.content.decode()
