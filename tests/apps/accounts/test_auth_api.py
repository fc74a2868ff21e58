"""Session login (CSRF, lockout), API keys (scopes, revocation, expiry), and their audit events."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.audit.models import AuditEvent
from apps.tenancy.scope import platform_scope

pytestmark = pytest.mark.django_db


def _events(**filters):
    with platform_scope():
        return list(AuditEvent.all_tenants.filter(**filters).order_by("id"))


def _login_client():
    client = APIClient(enforce_csrf_checks=True)
    token = client.get("/api/v1/auth/csrf/").json()["csrf_token"]
    client.credentials(HTTP_X_CSRFTOKEN=token)
    return client


def test_login_requires_csrf_and_is_audited(make_user):
    user = make_user(email="alice@example.org")
    no_csrf = APIClient(enforce_csrf_checks=True)
    r = no_csrf.post("/api/v1/auth/login/", {"email": user.email, "password": "correct-horse-battery"}, format="json")
    assert r.status_code == 403
    client = _login_client()
    r = client.post("/api/v1/auth/login/", {"email": user.email, "password": "correct-horse-battery"}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["email"] == "alice@example.org"
    assert client.get("/api/v1/auth/me/").json()["email"] == "alice@example.org"
    assert [e.action for e in _events(action="auth.login")] == ["auth.login"]
    client.credentials(HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)
    assert client.post("/api/v1/auth/logout/").status_code == 204
    assert len(_events(action="auth.logout")) == 1


def test_lockout_after_repeated_failures(make_user, settings):
    settings.COHORT_LOGIN_MAX_FAILURES = 3
    user = make_user(email="bob@example.org")
    client = _login_client()
    codes = [
        client.post(
            "/api/v1/auth/login/", {"email": user.email, "password": "wrong-password!"}, format="json"
        ).status_code
        for _ in range(3)
    ]
    assert codes == [401, 401, 401]
    r = client.post("/api/v1/auth/login/", {"email": user.email, "password": "correct-horse-battery"}, format="json")
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "login_locked"
    assert int(r["Retry-After"]) > 0
    assert len(_events(action="auth.login_failed")) == 3
    assert len(_events(action="auth.login_locked")) == 1


def test_api_key_shown_once_scoped_and_revocable(tenant, member, api_client_for):
    owner = member("owner")
    client = api_client_for(owner)
    r = client.post(f"/api/v1/tenants/{tenant.slug}/api-keys/", {"name": "ci", "scopes": ["read"]}, format="json")
    assert r.status_code == 201, r.content
    secret, key_id = r.json()["key"], r.json()["id"]
    listing = client.get(f"/api/v1/tenants/{tenant.slug}/api-keys/").json()["results"]
    assert "key" not in listing[0] and listing[0]["prefix"] in secret
    keyed = api_client_for(secret)
    assert keyed.get(f"/api/v1/tenants/{tenant.slug}/").status_code == 200
    # A read key may not manage members or keys.
    assert keyed.get(f"/api/v1/tenants/{tenant.slug}/api-keys/").status_code == 403
    assert client.delete(f"/api/v1/tenants/{tenant.slug}/api-keys/{key_id}/").status_code == 200
    r = keyed.get(f"/api/v1/tenants/{tenant.slug}/")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    denied = _events(action="api_key.use_denied")
    assert len(denied) == 1 and denied[0].details_dict["reason"] == "revoked"


def test_expired_and_garbage_keys_are_refused(tenant, api_key_for, api_client_for):
    expired = api_key_for(tenant, expires_at=timezone.now() + timedelta(seconds=1))
    from apps.accounts.models import ApiKey
    from apps.tenancy.scope import tenant_scope

    with tenant_scope(tenant.pk):
        ApiKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api_client_for(expired).get(f"/api/v1/tenants/{tenant.slug}/").status_code == 401
    assert api_client_for("coh_garbage").get(f"/api/v1/tenants/{tenant.slug}/").status_code == 401
    assert APIClient().get(f"/api/v1/tenants/{tenant.slug}/").status_code == 401


def test_suspended_tenant_blocks_keys_and_members(tenant, member, api_key_for, api_client_for):
    from apps.tenancy.services import tenant_set_status

    owner = member("owner")
    key = api_key_for(tenant, scopes=("read",))
    tenant_set_status(tenant=tenant, status="suspended", reason="compliance review")
    assert api_client_for(key).get(f"/api/v1/tenants/{tenant.slug}/").status_code == 401
    r = api_client_for(owner).get(f"/api/v1/tenants/{tenant.slug}/")
    assert r.status_code == 403 and r.json()["error"]["code"] == "tenant_suspended"
