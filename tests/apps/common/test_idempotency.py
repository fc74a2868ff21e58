"""Idempotency-Key on create endpoints: a retry returns the first response and creates nothing."""

import threading

import pytest
from django.db import connection

from apps.audit.models import AuditEvent
from apps.tenancy.scope import tenant_scope


@pytest.mark.django_db
def test_retry_returns_first_response_and_creates_once(tenant, member, api_client_for):
    owner = member("owner")
    client = api_client_for(owner)
    url = f"/api/v1/tenants/{tenant.slug}/api-keys/"
    body = {"name": "pipeline", "scopes": ["read"]}
    first = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="create-key-001")
    again = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="create-key-001")
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()  # including the secret, shown again only to the same principal
    assert again["Idempotent-Replayed"] == "true"
    with tenant_scope(tenant.pk):
        assert AuditEvent.objects.filter(action="api_key.created").count() == 1
    other = client.post(
        url, {"name": "other", "scopes": ["read"]}, format="json", HTTP_IDEMPOTENCY_KEY="create-key-001"
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # The same key from another principal is a different request.
    other_owner = member("owner")
    r = api_client_for(other_owner).post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="create-key-001")
    assert r.status_code == 201 and r.json()["id"] != first.json()["id"]


@pytest.mark.django_db
def test_failed_request_does_not_burn_the_key(tenant, member, api_client_for):
    owner = member("owner")
    client = api_client_for(owner)
    url = f"/api/v1/tenants/{tenant.slug}/members/"
    r = client.post(url, {"email": "nobody@example.org", "role": "analyst"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert r.status_code == 400
    bad_key = client.post(
        url, {"email": "x@example.org", "role": "analyst"}, format="json", HTTP_IDEMPOTENCY_KEY="bad key with spaces"
    )
    assert bad_key.status_code == 400 and "Idempotency-Key" in bad_key.json()["error"]["fields"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_create_one(tenant, member, api_client_for):
    owner = member("owner")
    url = f"/api/v1/tenants/{tenant.slug}/invitations/"
    results: list[int] = []

    def send() -> None:
        try:
            r = api_client_for(owner).post(
                url,
                {"email": "new@example.org", "role": "analyst"},
                format="json",
                HTTP_IDEMPOTENCY_KEY="invite-race-1",
            )
            results.append(r.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201, 201, 201, 201]
    from apps.tenancy.models import Invitation

    with tenant_scope(tenant.pk):
        assert Invitation.objects.count() == 1
        assert AuditEvent.objects.filter(action="invitation.created").count() == 1
