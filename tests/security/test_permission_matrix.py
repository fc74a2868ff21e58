"""The permission matrix, cell by cell: every (role, action) of ``apps.tenancy.policy.MATRIX`` and
every API-key scope set is exercised through a real request; allowed ⇔ the expected 2xx, refused ⇔
403 with the error envelope (never a 500, never a silent success).

The request table below must name every action in the matrix: adding an action without a request
here fails ``test_request_table_covers_the_matrix``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.urls import resolve

from apps.accounts.services import api_key_create
from apps.audit.models import AuditEvent
from apps.tenancy import policy
from apps.tenancy.models import Invitation, Membership, Role
from apps.tenancy.scope import tenant_scope
from apps.tenancy.services import invitation_create
from tests.security.helpers import assert_error_shape

pytestmark = pytest.mark.django_db


@dataclass
class Ctx:
    """What a request builder may use: the tenant, the acting principal, a factory for targets."""

    tenant: Any
    actor: Any  # a User, or None for an API key
    make_user: Callable[..., Any]
    seq: list[int] = field(default_factory=lambda: [0])

    def unique(self, prefix: str) -> str:
        self.seq[0] += 1
        return f"{prefix}{self.seq[0]}"

    def new_member(self, role: str = Role.ANALYST) -> Membership:
        user = self.make_user()
        from apps.audit.services import audit_record, audited_change

        with tenant_scope(self.tenant.pk), audited_change():
            m = Membership.objects.create(tenant=self.tenant, user=user, role=role)
            audit_record(action="member.added", tenant=self.tenant, target=m, details={"fixture": True})
        return m

    def new_invitation(self) -> Invitation:
        with tenant_scope(self.tenant.pk):
            inv, _ = invitation_create(
                tenant=self.tenant,
                actor_role=Role.OWNER,
                invited_by=None,
                email=f"{self.unique('inv')}@example.org",
                role=Role.ANALYST,
            )
        return inv

    def new_key(self) -> int:
        creator = self.actor if self.actor is not None else self.make_user()
        with tenant_scope(self.tenant.pk):
            return api_key_create(
                tenant=self.tenant, created_by=creator, name=self.unique("k"), scopes=["read"], expires_at=None
            ).key.pk

    def an_event(self) -> int:
        with tenant_scope(self.tenant.pk):
            return AuditEvent.objects.filter(tenant=self.tenant).order_by("-id").values_list("id", flat=True)[0]


@dataclass(frozen=True)
class Req:
    method: str
    path: Callable[[Ctx], str]  # relative to /api/v1/tenants/<slug>/
    body: Callable[[Ctx], dict[str, Any]] | None = None
    ok: int = 200


def _t(suffix: str = "") -> Callable[[Ctx], str]:
    return lambda c: f"/api/v1/tenants/{c.tenant.slug}/{suffix}"


# action -> the requests that exercise it (each must succeed for an allowed principal).
REQUESTS: dict[str, list[Req]] = {
    "tenant.view": [Req("GET", _t())],
    "tenant.update": [Req("PATCH", _t(), lambda c: {"name": c.unique("Renamed ")})],
    "member.list": [
        Req("GET", _t("members/")),
        Req("GET", lambda c: f"/api/v1/tenants/{c.tenant.slug}/members/{c.new_member().pk}/"),
    ],
    "member.add": [Req("POST", _t("members/"), lambda c: {"email": c.make_user().email, "role": "analyst"}, 201)],
    "member.change_role": [
        Req(
            "PATCH",
            lambda c: f"/api/v1/tenants/{c.tenant.slug}/members/{c.new_member().pk}/",
            lambda c: {"role": "auditor"},
        ),
    ],
    "member.remove": [Req("DELETE", lambda c: f"/api/v1/tenants/{c.tenant.slug}/members/{c.new_member().pk}/", ok=204)],
    "invitation.list": [
        Req("GET", _t("invitations/")),
        Req("GET", lambda c: f"/api/v1/tenants/{c.tenant.slug}/invitations/{c.new_invitation().pk}/"),
    ],
    "invitation.create": [
        Req("POST", _t("invitations/"), lambda c: {"email": f"{c.unique('new')}@example.org", "role": "analyst"}, 201),
    ],
    "invitation.revoke": [
        Req("DELETE", lambda c: f"/api/v1/tenants/{c.tenant.slug}/invitations/{c.new_invitation().pk}/"),
    ],
    "apikey.list": [
        Req("GET", _t("api-keys/")),
        Req("GET", lambda c: f"/api/v1/tenants/{c.tenant.slug}/api-keys/{c.new_key()}/"),
    ],
    "apikey.create": [Req("POST", _t("api-keys/"), lambda c: {"name": c.unique("key"), "scopes": ["read"]}, 201)],
    # The actor's own key: integrators may revoke only the keys they created.
    "apikey.revoke": [Req("DELETE", lambda c: f"/api/v1/tenants/{c.tenant.slug}/api-keys/{c.new_key()}/")],
    "audit.list": [
        Req("GET", _t("audit-events/")),
        Req("GET", lambda c: f"/api/v1/tenants/{c.tenant.slug}/audit-events/{c.an_event()}/"),
    ],
    "audit.export": [Req("GET", _t("audit-events/export/?file_format=csv"))],
    "audit.verify": [Req("POST", _t("audit-events/verify/"))],
}

KEY_SCOPE_SETS: tuple[tuple[str, ...], ...] = (("read",), ("write",), ("read", "write"))


def test_request_table_covers_the_matrix() -> None:
    missing = sorted(set(policy.MATRIX) - set(REQUESTS))
    extra = sorted(set(REQUESTS) - set(policy.MATRIX))
    assert not missing, f"actions in policy.MATRIX without a request in REQUESTS: {missing}"
    assert not extra, f"REQUESTS names actions that policy.MATRIX does not define: {extra}"


@pytest.mark.parametrize("action", list(REQUESTS))
def test_each_request_is_routed_to_its_action(action: str, tenant: Any, make_user: Callable[..., Any]) -> None:
    """The request we use for an action really is governed by that action (else the table lies)."""
    ctx = Ctx(tenant=tenant, actor=make_user(), make_user=make_user)
    for req in REQUESTS[action]:
        path = req.path(ctx).split("?")[0]
        view_cls = resolve(path).func.cls  # type: ignore[attr-defined]
        declared = view_cls.permission_actions.get(req.method) or view_cls.permission_action
        assert declared == action, (req.method, path, declared, action)


def _dispatch(client: Any, method: str, path: str, body: dict[str, Any] | None) -> Any:
    fn = getattr(client, method.lower())
    return fn(path, body, format="json") if body is not None else fn(path)


@pytest.mark.parametrize("action", list(policy.MATRIX))
def test_roles(
    action: str,
    tenant: Any,
    member: Callable[..., Any],
    make_user: Callable[..., Any],
    api_client_for: Callable[[Any], Any],
) -> None:
    allowed_roles, _, _ = policy.MATRIX[action]
    problems: list[str] = []
    for role in policy.ROLES:
        user = member(role)
        client = api_client_for(user)
        ctx = Ctx(tenant=tenant, actor=user, make_user=make_user)
        for req in REQUESTS[action]:
            r = _dispatch(client, req.method, req.path(ctx), req.body(ctx) if req.body else None)
            if role in allowed_roles:
                if r.status_code != req.ok:
                    problems.append(f"{role} {req.method}: expected {req.ok}, got {r.status_code} {r.content[:200]!r}")
            elif r.status_code != 403:
                problems.append(f"{role} {req.method}: expected 403, got {r.status_code} {r.content[:200]!r}")
            else:
                assert assert_error_shape(r)["code"] == "permission_denied"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("action", list(policy.MATRIX))
def test_api_key_scopes(
    action: str,
    tenant: Any,
    make_user: Callable[..., Any],
    api_key_for: Callable[..., str],
    api_client_for: Callable[[Any], Any],
) -> None:
    problems: list[str] = []
    for scopes in KEY_SCOPE_SETS:
        client = api_client_for(api_key_for(tenant, scopes=scopes))
        ctx = Ctx(tenant=tenant, actor=None, make_user=make_user)
        expected_ok = policy.api_key_allows(list(scopes), action)
        for req in REQUESTS[action]:
            r = _dispatch(client, req.method, req.path(ctx), req.body(ctx) if req.body else None)
            if expected_ok and r.status_code != req.ok:
                problems.append(f"key{scopes} {req.method}: expected {req.ok}, got {r.status_code} {r.content[:200]!r}")
            if not expected_ok:
                if r.status_code != 403:
                    problems.append(f"key{scopes} {req.method}: expected 403, got {r.status_code} {r.content[:200]!r}")
                else:
                    assert_error_shape(r)
    assert not problems, "\n".join(problems)


def test_policy_helpers_fail_closed() -> None:
    assert not policy.role_allows(Role.OWNER, "no.such.action")
    assert not policy.api_key_allows(["read", "write"], "no.such.action")
    assert not policy.role_allows("superuser", "tenant.view")
    # A key never does what the integrator role may not, whatever its scopes.
    for action, (roles, scope, _) in policy.MATRIX.items():
        if policy.API_KEY_ROLE not in roles or scope is None:
            assert not policy.api_key_allows(["read", "write"], action), action
