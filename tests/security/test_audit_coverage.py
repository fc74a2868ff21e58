"""AUD-1: every mutating API route (found by walking the URL resolver) writes exactly one complete
audit event carrying the request's X-Request-ID. A new route without a request builder here fails."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from apps.accounts.services import api_key_create
from apps.audit.models import AuditEvent
from apps.tenancy.models import Membership, Role, Tenant
from apps.tenancy.scope import platform_scope, tenant_scope
from apps.tenancy.services import invitation_create
from tests.conftest import write_report

API_PREFIX = "api/v1/"
MUTATING = ("POST", "PUT", "PATCH", "DELETE")
PASSWORD = "correct-horse-battery"


def api_routes(methods: tuple[str, ...] = MUTATING) -> list[str]:
    """``"METHOD route"`` for every (view method, URL pattern) under /api/v1/ that the views implement."""
    found: list[str] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            route = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route)
                continue
            assert isinstance(p, URLPattern)
            if not route.startswith(API_PREFIX):
                continue
            view = getattr(p.callback, "view_class", None) or getattr(p.callback, "cls", None)
            if view is None:  # a function view: its methods cannot be listed, so it needs a builder anyway
                found.append(f"ANY {route}")
                continue
            found.extend(
                f"{m} {route}"
                for m in methods
                if m.lower() in view.http_method_names and callable(getattr(view, m.lower(), None))
            )

    walk(get_resolver().url_patterns, "")
    return found


@dataclass
class World:
    """What the request builders need: one tenant, its owner signed in, and the factories."""

    tenant: Tenant
    owner: Any
    client: APIClient
    make_user: Callable[..., Any]
    member: Callable[..., Any]
    api_client_for: Callable[..., APIClient]
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def base(self) -> str:
        return f"/api/v1/tenants/{self.tenant.slug}"

    def membership_of(self, role: str) -> Membership:
        user = self.member(role, tenant=self.tenant)
        with tenant_scope(self.tenant.pk):
            return Membership.objects.get(user=user)


@dataclass
class Call:
    """One request to send, the status it must get, and the event it must produce."""

    client: APIClient
    method: str
    path: str
    body: dict[str, Any] | None
    status: int
    action: str
    tenant_id: int | None  # None: a platform event (platform chain)


def _login(w: World) -> Call:
    user = w.make_user()
    c = w.api_client_for(None)
    c.credentials(HTTP_X_CSRFTOKEN=c.get("/api/v1/auth/csrf/").json()["csrf_token"])
    return Call(c, "POST", "/api/v1/auth/login/", {"email": user.email, "password": PASSWORD}, 200, "auth.login", None)


def _logout(w: World) -> Call:
    return Call(w.api_client_for(w.make_user()), "POST", "/api/v1/auth/logout/", None, 204, "auth.logout", None)


def _api_key_create(w: World) -> Call:
    return Call(
        w.client, "POST", f"{w.base}/api-keys/", {"name": "ci", "scopes": ["read"]}, 201, "api_key.created", w.tenant.pk
    )


def _api_key_revoke(w: World) -> Call:
    with tenant_scope(w.tenant.pk):
        key = api_key_create(tenant=w.tenant, created_by=w.owner, name="old", scopes=["read"], expires_at=None).key
    return Call(w.client, "DELETE", f"{w.base}/api-keys/{key.pk}/", None, 200, "api_key.revoked", w.tenant.pk)


def _tenant_update(w: World) -> Call:
    return Call(w.client, "PATCH", f"{w.base}/", {"name": "Renamed"}, 200, "tenant.updated", w.tenant.pk)


def _member_add(w: World) -> Call:
    return Call(
        w.client,
        "POST",
        f"{w.base}/members/",
        {"email": w.make_user().email, "role": "analyst"},
        201,
        "member.added",
        w.tenant.pk,
    )


def _member_change_role(w: World) -> Call:
    m = w.membership_of(Role.ANALYST)
    return Call(
        w.client, "PATCH", f"{w.base}/members/{m.pk}/", {"role": "auditor"}, 200, "member.role_changed", w.tenant.pk
    )


def _member_remove(w: World) -> Call:
    m = w.membership_of(Role.ANALYST)
    return Call(w.client, "DELETE", f"{w.base}/members/{m.pk}/", None, 204, "member.removed", w.tenant.pk)


def _invitation_create(w: World) -> Call:
    return Call(
        w.client,
        "POST",
        f"{w.base}/invitations/",
        {"email": "new@example.org", "role": "analyst"},
        201,
        "invitation.created",
        w.tenant.pk,
    )


def _invite(w: World, email: str) -> tuple[Any, str]:
    with tenant_scope(w.tenant.pk):
        return invitation_create(
            tenant=w.tenant, actor_role=Role.OWNER, invited_by=w.owner, email=email, role=Role.ANALYST
        )


def _invitation_revoke(w: World) -> Call:
    inv, _token = _invite(w, f"revoke{next(w.counter)}@example.org")
    return Call(w.client, "DELETE", f"{w.base}/invitations/{inv.pk}/", None, 200, "invitation.revoked", w.tenant.pk)


def _invitation_accept(w: World) -> Call:
    invitee = w.make_user()
    _inv, token = _invite(w, invitee.email)
    return Call(
        w.api_client_for(invitee),
        "POST",
        "/api/v1/invitations/accept/",
        {"token": token},
        201,
        "invitation.accepted",
        w.tenant.pk,
    )


def _audit_verify(w: World) -> Call:
    return Call(w.client, "POST", f"{w.base}/audit-events/verify/", None, 200, "audit.verified", w.tenant.pk)


def _audit_export(w: World) -> Call:
    return Call(
        w.client, "GET", f"{w.base}/audit-events/export/?file_format=csv", None, 200, "audit.exported", w.tenant.pk
    )


T = "api/v1/tenants/<slug:tenant_slug>"
# Every mutating route needs a builder here: a route added without one fails the test below.
BUILDERS: dict[str, Callable[[World], Call]] = {
    "POST api/v1/auth/login/": _login,
    "POST api/v1/auth/logout/": _logout,
    f"POST {T}/api-keys/": _api_key_create,
    f"DELETE {T}/api-keys/<pk:key_id>/": _api_key_revoke,
    f"PATCH {T}/": _tenant_update,
    f"POST {T}/members/": _member_add,
    f"PATCH {T}/members/<pk:member_id>/": _member_change_role,
    f"DELETE {T}/members/<pk:member_id>/": _member_remove,
    f"POST {T}/invitations/": _invitation_create,
    f"DELETE {T}/invitations/<pk:invitation_id>/": _invitation_revoke,
    "POST api/v1/invitations/accept/": _invitation_accept,
    f"POST {T}/audit-events/verify/": _audit_verify,
}
# Sensitive reads (RELIABILITY AUD-1) are held to the same rule.
SENSITIVE_READS: dict[str, Callable[[World], Call]] = {
    f"GET {T}/audit-events/export/": _audit_export,
}


def missing_fields(event: AuditEvent, call: Call, request_id: str) -> list[str]:
    """The required fields this event lacks or gets wrong."""
    problems = []
    if event.actor_type in ("", "anonymous") or not (event.actor_id or event.actor_label):
        problems.append("actor")
    if call.tenant_id is None:
        if event.tenant_id is not None or event.chain != "platform":
            problems.append("platform")
    elif event.tenant_id != call.tenant_id or event.chain != f"t{call.tenant_id}":
        problems.append("tenant")
    if not event.target_type:
        problems.append("object")
    if event.action != call.action:
        problems.append("action")
    if event.outcome != "success":
        problems.append("outcome")
    if event.created_at is None or event.created_at.utcoffset() is None:
        problems.append("created_at")
    if event.request_id != request_id:
        problems.append("request_id")
    if not event.source_ip:
        problems.append("source_ip")
    return problems


def _last_event_id() -> int:
    with platform_scope():
        return AuditEvent.all_tenants.order_by("-id").values_list("id", flat=True).first() or 0


@pytest.mark.django_db
def test_aud1_every_mutating_route_writes_exactly_one_event(
    tenant: Any, member: Any, make_user: Any, api_client_for: Any
) -> None:
    owner = member("owner")
    w = World(
        tenant=tenant,
        owner=owner,
        client=api_client_for(owner),
        make_user=make_user,
        member=member,
        api_client_for=api_client_for,
    )
    routes = api_routes()
    reads = [r for r in api_routes(("GET",)) if r in SENSITIVE_READS]
    unbuilt = [r for r in routes if r not in BUILDERS]
    stale = [r for r in BUILDERS if r not in routes]
    results: dict[str, dict[str, Any]] = {}
    for route in [r for r in routes if r in BUILDERS] + reads:
        call = {**BUILDERS, **SENSITIVE_READS}[route](w)
        request_id = f"aud1-{len(results):03d}-{tenant.pk}"
        since = _last_event_id()
        send = getattr(call.client, call.method.lower())
        r = (
            send(call.path, call.body, format="json", HTTP_X_REQUEST_ID=request_id)
            if call.body is not None
            else send(call.path, HTTP_X_REQUEST_ID=request_id)
        )
        with platform_scope():
            new = list(AuditEvent.all_tenants.filter(id__gt=since).order_by("id"))
        missing = missing_fields(new[0], call, request_id) if len(new) == 1 else ["exactly_one_event"]
        results[route] = {
            "status": r.status_code,
            "events": [(e.chain, e.action, e.request_id) for e in new],
            "missing": missing,
            "has_object": bool(new and new[0].target_type),
        }
        assert r.status_code == call.status, (route, r.status_code, r.content[:300])
    mutating = [r for r in routes if r in BUILDERS]
    exactly_one = sum(len(results[r]["events"]) == 1 for r in mutating)
    missing_count = sum(len(results[r]["missing"]) for r in mutating if results[r]["missing"] != ["exactly_one_event"])
    passed = (
        not unbuilt
        and not stale
        and exactly_one == len(routes)
        and missing_count == 0
        and all(not results[r]["missing"] for r in reads)
    )
    write_report(
        "AUD-1",
        {
            "routes_enumerated": len(routes),
            "routes_with_exactly_one_event": exactly_one,
            "missing_field_count": missing_count,
            "routes_without_builder": unbuilt,
            "stale_builders": stale,
            "sensitive_reads_checked": len(reads),
            "events_without_object": sorted(r for r, v in results.items() if not v["has_object"]),
            "routes": results,
        },
        passed,
    )
    assert not unbuilt, f"mutating routes with no request builder in BUILDERS (add one): {unbuilt}"
    assert not stale, f"BUILDERS entries that match no route (renamed or removed?): {stale}"
    assert reads == list(SENSITIVE_READS), reads
    assert exactly_one == len(routes), {r: v["events"] for r, v in results.items() if len(v["events"]) != 1}
    assert missing_count == 0 and all(not v["missing"] for v in results.values()), {
        r: v["missing"] for r, v in results.items() if v["missing"]
    }
