"""ISO-10: mass assignment. Every write endpoint refuses fields it does not accept (400, the field
named in ``fields``) and nothing changes: not the tenant, not a membership, not a user's flags, not
a key's hash or prefix. Report: reports/ISO-10.json {fields_changed: 0}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection

from apps.tenancy.models import Role
from apps.tenancy.scope import platform_scope, tenant_scope
from apps.tenancy.services import invitation_create
from tests.conftest import write_report
from tests.security.helpers import assert_error_shape

pytestmark = pytest.mark.django_db

# Fields a careless serializer might honour. Each endpoint gets every one it does not accept.
FORBIDDEN: dict[str, Any] = {
    "tenant_id": "OTHER",
    "tenant": "OTHER",
    "owner": True,
    "is_staff": True,
    "is_superuser": True,
    "is_active": False,
    "role": "owner",
    "grants": ["*"],
    "permissions": ["audit.export"],
    "id": 1,
    "pk": 1,
    "key_hash": "0" * 64,
    "prefix": "aaaaaaaaaaaa",
    "key": "coh_aaaaaaaaaaaa_" + "b" * 43,
    "created_by": 1,
    "created_by_id": 1,
    "invited_by": 1,
    "user": 1,
    "user_id": 1,
    "email": "someone-else@example.org",
    "password": "new-password-123",
    "scopes": ["read", "write"],
    "status": "active",
    "slug": "hijacked",
    "token_hash": "0" * 64,
    "revoked_at": None,
    "accepted_at": "2020-01-01T00:00:00Z",
    "expires_at": "2999-01-01T00:00:00Z",
    "created_at": "2020-01-01T00:00:00Z",
    "last_used_at": None,
    "chain": "platform",
    "hash": "0" * 64,
}


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: Callable[[Any], str]
    body: Callable[[Any], dict[str, Any]]
    ok: int
    optional: tuple[str, ...] = ()  # accepted fields the valid body leaves out


def _t(w: Any, suffix: str = "") -> str:
    return f"/api/v1/tenants/{w.tenant.slug}/{suffix}"


ENDPOINTS = [
    Endpoint("tenant update", "PATCH", lambda w: _t(w), lambda w: {"name": "Renamed"}, 200),
    Endpoint(
        "member add", "POST", lambda w: _t(w, "members/"), lambda w: {"email": w.outsider.email, "role": "analyst"}, 201
    ),
    Endpoint(
        "member change role",
        "PATCH",
        lambda w: _t(w, f"members/{w.analyst_membership}/"),
        lambda w: {"role": "auditor"},
        200,
    ),
    Endpoint(
        "invitation create",
        "POST",
        lambda w: _t(w, "invitations/"),
        lambda w: {"email": "new@example.org", "role": "analyst", "ttl_days": 3},
        201,
    ),
    Endpoint(
        "api key create",
        "POST",
        lambda w: _t(w, "api-keys/"),
        lambda w: {"name": "ci", "scopes": ["read"]},
        201,
        ("expires_at",),
    ),
    Endpoint("invitation accept", "POST", lambda w: "/api/v1/invitations/accept/", lambda w: {"token": w.token}, 201),
    Endpoint(
        "login",
        "POST",
        lambda w: "/api/v1/auth/login/",
        lambda w: {"email": w.owner.email, "password": "correct-horse-battery"},
        200,
    ),
]


@dataclass
class World:
    tenant: Any
    other: Any
    owner: Any
    outsider: Any
    analyst_membership: int
    token: str


def _row(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else value


def snapshot(w: World) -> dict[str, Any]:
    """Every row the endpoints could touch, read with the tenant (and platform) in scope."""
    snap: dict[str, Any] = {}
    with platform_scope(), connection.cursor() as cur:
        cur.execute(
            "SELECT to_jsonb(t) FROM tenancy_tenant t WHERE id = ANY(%s) ORDER BY id", [[w.tenant.pk, w.other.pk]]
        )
        snap["tenancy_tenant"] = [_row(r[0]) for r in cur.fetchall()]
        cur.execute("SELECT to_jsonb(u) - 'last_login' FROM accounts_user u ORDER BY id")
        snap["accounts_user"] = [_row(r[0]) for r in cur.fetchall()]
    with tenant_scope(w.tenant.pk), connection.cursor() as cur:
        for table in ("tenancy_membership", "tenancy_invitation", "accounts_apikey", "common_idempotencyrecord"):
            cur.execute(f'SELECT to_jsonb(t) FROM "{table}" t ORDER BY id')
            snap[table] = [_row(r[0]) for r in cur.fetchall()]
    return snap


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for table in before:
        old = {r["id"]: r for r in before[table]}
        new = {r["id"]: r for r in after[table]}
        out += [f"{table}#{i} added" for i in new.keys() - old.keys()]
        out += [f"{table}#{i} removed" for i in old.keys() - new.keys()]
        for i in old.keys() & new.keys():
            out += [f"{table}#{i}.{k}" for k in old[i] if old[i][k] != new[i].get(k)]
    return out


@pytest.fixture
def world(tenant: Any, other_tenant: Any, member: Callable[..., Any], make_user: Callable[..., Any]) -> World:
    owner = member(Role.OWNER)
    analyst = member(Role.ANALYST)
    with tenant_scope(tenant.pk):
        from apps.tenancy.models import Membership

        analyst_membership = Membership.objects.get(user=analyst).pk
    outsider = make_user()
    with tenant_scope(tenant.pk):
        _, token = invitation_create(
            tenant=tenant, actor_role=Role.OWNER, invited_by=owner, email=owner.email, role=Role.ANALYST
        )
    return World(
        tenant=tenant,
        other=other_tenant,
        owner=owner,
        outsider=outsider,
        analyst_membership=analyst_membership,
        token=token,
    )


def test_iso10_unknown_fields_are_refused_and_change_nothing(
    world: World, api_client_for: Callable[[Any], Any]
) -> None:
    client = api_client_for(world.owner)
    before = snapshot(world)
    attempts = accepted = 0
    problems: list[str] = []
    for ep in ENDPOINTS:
        valid = ep.body(world)
        for name, value in FORBIDDEN.items():
            if name in valid or name in ep.optional:
                continue  # the endpoint accepts this field; its value is validated by the endpoint's own tests
            if name in {"tenant_id", "tenant"}:
                value = world.other.pk if name == "tenant_id" else world.other.slug
            body = {**valid, name: value}
            attempts += 1
            r = getattr(client, ep.method.lower())(ep.path(world), body, format="json")
            if r.status_code != 400:
                accepted += 1
                problems.append(f"{ep.name} +{name}: {r.status_code} {r.content[:200]!r}")
                continue
            error = assert_error_shape(r, 400, fields=[name])
            if error["fields"][name] != ["Unknown field."]:
                problems.append(f"{ep.name} +{name}: {error}")
    # Nested: the same names inside a list or object are not a way around it.
    for ep in ENDPOINTS[:5]:
        attempts += 1
        body = {**ep.body(world), "items": [{"tenant_id": world.other.pk, "is_staff": True}]}
        r = getattr(client, ep.method.lower())(ep.path(world), body, format="json")
        if r.status_code != 400:
            accepted += 1
            problems.append(f"{ep.name} +items: {r.status_code}")
    after = snapshot(world)
    changed = changed_fields(before, after)
    write_report(
        "ISO-10",
        {
            "endpoints": len(ENDPOINTS),
            "forbidden_field_names": len(FORBIDDEN),
            "attempts": attempts,
            "accepted": accepted,
            "fields_changed": len(changed),
            "changed": changed[:50],
            "problems": problems[:50],
        },
        not changed and not problems,
    )
    assert not problems, "\n".join(problems)
    assert not changed, changed


def test_valid_requests_still_work_after_the_probes(world: World, api_client_for: Callable[[Any], Any]) -> None:
    """Control: each endpoint accepts its valid body, so the 400s above are about the extra field."""
    client = api_client_for(world.owner)
    for ep in ENDPOINTS:
        if ep.name == "login":
            continue  # signing in replaces the session the other requests use
        r = getattr(client, ep.method.lower())(ep.path(world), ep.body(world), format="json")
        if ep.name == "invitation accept":
            assert r.status_code == 409, r.content  # the owner is a member already: reached the service
        else:
            assert r.status_code == ep.ok, (ep.name, r.status_code, r.content)
