"""ISO-1 (cross-tenant probes leak nothing and change nothing), ISO-2 (no existence oracle) and
AUD-3 (every refused probe leaves exactly one denial event).

Every route of the URL resolver must have an entry in ``PROBES`` (or in the reviewed ``SKIPPED``
allow-list); a new route without one fails the test. Tenants A and B each hold one of every object
(members of every role, an invitation, active and revoked API keys, audit events, and a dataset
with a raw and a de-identified version, a ``process`` grant to a third tenant C, an open upload
session with a stored chunk and a budget reservation: ``tests.security.helpers.seed_datasets``;
no grant links A and B, so nothing of A's is legitimately visible to B). The probing
identities are B's owner, B's read+write API key, anonymous, A's revoked API key, a user removed
from A, and a member of A whose role lacks the route's permission. Each route and method is probed
with A's slug/ids in the path, A's ids in the query string, and A's ids in the JSON body (FK-like
fields and nested arrays); bodies the API would accept are also sent with only A's ids (path or
FK field) wrong. Multipart and octet-stream routes get bodies of their own media type.

Figures: reports/ISO-1.json, ISO-2.json, AUD-3.json.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from apps.accounts.services import api_key_create, api_key_revoke
from apps.audit.models import AuditEvent
from apps.tenancy import policy
from apps.tenancy.models import Membership, Role
from apps.tenancy.scope import platform_scope, tenant_scope
from apps.tenancy.services import invitation_create, membership_remove
from tests.conftest import write_report
from tests.security.helpers import (
    DENIAL_ACTIONS,
    REFUSED_STATUSES,
    DatasetSeed,
    admin_connect,
    denial_count,
    seed_datasets,
    tenant_tables,
)

pytestmark = pytest.mark.django_db(transaction=True)

# Reviewed allow-list of route prefixes that are not probed, and why.
SKIPPED: dict[str, str] = {
    "admin/": "Django admin console: staff-only, OTP-gated, platform scope; tested in tests/apps/admin",
    "api/schema/": "OpenAPI document: public by design, holds no tenant data",
    "api/docs/": "Swagger UI page: static, public by design",
    "api/redoc/": "ReDoc page: static, public by design",
    "static/": "static files (only routed with DEBUG): no tenant data",
    # "" is the root route only (matched exactly, not as a prefix of every route).
    "": "the web app's page (index.html) at /: static, public by design, no tenant data",
    "app/": "the web app's page at its client routes: the same static index.html, no tenant data",
}
METHODS = ("get", "post", "put", "patch", "delete")


FILE = object()  # in a multipart valid_body: a small CSV file goes here


@dataclass(frozen=True)
class Own:
    """In a valid_body: the probing side's (B's) own object id under this ``object_ids()`` key."""

    key: str


def resolve_own(body: dict[str, Any], ids: dict[str, int]) -> dict[str, Any]:
    return {k: ids[v.key] if isinstance(v, Own) else v for k, v in body.items()}


# A tiny valid training spec (the jobs/ POST body).
TINY_SPEC: dict[str, Any] = {"model": {"name": "logistic_regression", "params": {}}, "epochs": 1, "batch_size": 8}


@dataclass(frozen=True)
class RouteProbe:
    kind: str  # tenant | public | self | accept
    methods: tuple[str, ...]  # the methods the route implements (checked against the view)
    valid_body: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> fields the API accepts
    # method -> how the body is encoded: "json" (default), "multipart" (FILE becomes a file; nested
    # values JSON-encoded) or "octet" (the body dict, JSON-encoded, as application/octet-stream bytes)
    content: dict[str, str] = field(default_factory=dict)
    valid_query: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> query the API needs
    # Body fields naming a tenant object: also sent alone (valid body + A's id) on B's own tenant.
    body_fks: tuple[str, ...] = ()


T = "api/v1/tenants/<slug:tenant_slug>/"
D = T + "datasets/<pk:dataset_id>/"
V = D + "versions/<pk:version_id>/"
FED = T + "federations/<pk:federation_id>/"
PROBES: dict[str, RouteProbe] = {
    "healthz": RouteProbe("public", ("GET",)),
    "readyz": RouteProbe("public", ("GET",)),
    "api/v1/auth/csrf/": RouteProbe("public", ("GET",)),
    "api/v1/auth/login/": RouteProbe("public", ("POST",), {"POST": {"email": "x@example.org", "password": "x"}}),
    "api/v1/auth/logout/": RouteProbe("self", ("POST",)),
    "api/v1/auth/me/": RouteProbe("self", ("GET",)),
    "api/v1/tenants/": RouteProbe("self", ("GET",)),
    "api/v1/invitations/accept/": RouteProbe("accept", ("POST",)),
    T: RouteProbe("tenant", ("GET", "PATCH"), {"PATCH": {"name": "Renamed"}}),
    T + "members/": RouteProbe("tenant", ("GET", "POST"), {"POST": {"email": "x@example.org", "role": "analyst"}}),
    T + "members/<pk:member_id>/": RouteProbe("tenant", ("GET", "PATCH", "DELETE"), {"PATCH": {"role": "auditor"}}),
    T + "invitations/": RouteProbe("tenant", ("GET", "POST"), {"POST": {"email": "y@example.org", "role": "analyst"}}),
    T + "invitations/<pk:invitation_id>/": RouteProbe("tenant", ("GET", "DELETE")),
    T + "api-keys/": RouteProbe("tenant", ("GET", "POST"), {"POST": {"name": "probe", "scopes": ["read"]}}),
    T + "api-keys/<pk:key_id>/": RouteProbe("tenant", ("GET", "DELETE")),
    T + "audit-events/": RouteProbe("tenant", ("GET",)),
    T + "audit-events/export/": RouteProbe("tenant", ("GET",)),
    T + "audit-events/verify/": RouteProbe("tenant", ("POST",)),
    T + "audit-events/<pk:event_id>/": RouteProbe("tenant", ("GET",)),
    # datasets
    T + "datasets/": RouteProbe("tenant", ("GET", "POST"), {"POST": {"name": "probe set", "description": "x"}}),
    D: RouteProbe("tenant", ("GET", "PATCH", "DELETE"), {"PATCH": {"name": "renamed", "description": "x"}}),
    D + "versions/": RouteProbe(
        "tenant", ("GET", "POST"), {"POST": {"file": FILE, "format": "csv"}}, content={"POST": "multipart"}
    ),
    V: RouteProbe("tenant", ("GET",)),
    V + "pii-report/": RouteProbe("tenant", ("GET",)),
    V + "deidentify/": RouteProbe(
        "tenant",
        ("POST",),
        {"POST": {"policy": {"columns": {"name": {"action": "drop", "params": {}}}, "quasi_identifiers": []}}},
    ),
    V + "preview/": RouteProbe("tenant", ("GET",)),
    V + "download/": RouteProbe("tenant", ("GET",)),
    D + "grants/": RouteProbe(
        "tenant", ("GET", "POST"), {"POST": {"grantee": "iso-probe-grantee", "permission": "download"}}
    ),
    D + "grants/<pk:grant_id>/": RouteProbe("tenant", ("GET", "DELETE")),
    D + "budget/": RouteProbe("tenant", ("GET", "PUT"), {"PUT": {"epsilon": "900", "delta": "0.001"}}),
    D + "budget/reservations/": RouteProbe(
        "tenant", ("GET", "POST"), {"POST": {"epsilon": "0.1", "delta": "0", "purpose": "probe"}}
    ),
    D + "budget/reservations/<pk:reservation_id>/commit/": RouteProbe(
        "tenant", ("POST",), {"POST": {"epsilon_spent": "0.1"}}
    ),
    D + "budget/reservations/<pk:reservation_id>/release/": RouteProbe("tenant", ("POST",), {"POST": {}}),
    T + "uploads/": RouteProbe(
        "tenant",
        ("POST",),
        {"POST": {"dataset_id": 1, "filename": "probe.csv", "size": 16}},
        body_fks=("dataset_id",),
    ),
    T + "uploads/<pk:upload_id>/": RouteProbe(
        "tenant",
        ("GET", "PUT", "DELETE"),
        {"PUT": {"chunk": "a,b"}},
        content={"PUT": "octet"},
        valid_query={"PUT": {"offset": 8}},
    ),
    T + "uploads/<pk:upload_id>/complete/": RouteProbe("tenant", ("POST",), {"POST": {"sha256": "0" * 64}}),
    T + "shared-datasets/": RouteProbe("tenant", ("GET",)),
    T + "shared-datasets/<pk:dataset_id>/": RouteProbe("tenant", ("GET",)),
    T + "shared-datasets/<pk:dataset_id>/preview/": RouteProbe("tenant", ("GET",)),
    T + "shared-datasets/<pk:dataset_id>/download/": RouteProbe("tenant", ("GET",)),
    # training
    T + "jobs/": RouteProbe(
        "tenant",
        ("GET", "POST"),
        {"POST": {"name": "probe job", "dataset_version": Own("dataset_version"), "spec": TINY_SPEC}},
        body_fks=("dataset_version",),
    ),
    T + "jobs/<pk:job_id>/": RouteProbe("tenant", ("GET", "DELETE")),
    T + "jobs/<pk:job_id>/events/": RouteProbe("tenant", ("GET",), valid_query={"GET": {"after": 0}}),
    T + "models/": RouteProbe("tenant", ("GET",)),
    T + "models/<pk:model_id>/": RouteProbe("tenant", ("GET",)),
    T + "models/<pk:model_id>/download/": RouteProbe("tenant", ("GET",)),
    T + "models/<pk:model_id>/export/": RouteProbe(
        "tenant", ("GET",), valid_query={"GET": {"file_format": "torchscript"}}
    ),
    T + "models/<pk:model_id>/predict/": RouteProbe("tenant", ("POST",), {"POST": {"rows": [{"a": 1.0}]}}),
    T + "training/quota/": RouteProbe("tenant", ("GET",)),
    T + "training/catalogue/": RouteProbe("tenant", ("GET",)),
    # federations
    T + "federations/": RouteProbe(
        "tenant",
        ("GET", "POST"),
        {
            "POST": {
                "name": "probe federation",
                "spec": {"train": TINY_SPEC, "min_participants": 1},
                "sites": [{"dataset_id": 1}],
            }
        },
    ),
    T + "federations/simulate/": RouteProbe(
        "tenant",
        ("POST",),
        {
            "POST": {
                "name": "probe simulation",
                "dataset_version": Own("dataset_version"),
                "spec": {"train": TINY_SPEC, "rounds": 1},
                "split": {"sites": 2},
            }
        },
        body_fks=("dataset_version",),
    ),
    FED: RouteProbe("tenant", ("GET",)),
    FED + "start/": RouteProbe("tenant", ("POST",)),
    FED + "cancel/": RouteProbe("tenant", ("POST",)),
    FED + "rounds/": RouteProbe("tenant", ("GET",)),
    FED + "sites/": RouteProbe("tenant", ("GET",)),
    FED + "events/": RouteProbe("tenant", ("GET",), valid_query={"GET": {"after": 0}}),
    T + "federation-sites/": RouteProbe("tenant", ("GET",)),
    T + "federation-sites/<pk:site_id>/approve/": RouteProbe("tenant", ("POST",), {"POST": {"digest": "0" * 64}}),
    T + "federation-sites/<pk:site_id>/reject/": RouteProbe("tenant", ("POST",), {"POST": {}}),
    T + "federation-sites/<pk:site_id>/revoke/": RouteProbe("tenant", ("POST",), {"POST": {}}),
}

_PARAM_RE = re.compile(r"<(?:(?P<conv>\w+):)?(?P<name>\w+)>")


# --- route enumeration ---------------------------------------------------------------------------


def iter_routes(patterns: list[Any] | None = None, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(route string, callback) for every URL pattern, descending into includes."""
    for p in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            yield from iter_routes(p.url_patterns, route)
        elif isinstance(p, URLPattern):
            yield route, p.callback


def implemented_methods(callback: Any) -> tuple[str, ...] | None:
    cls = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if cls is None:
        return None  # a function view: the probe table states its methods
    return tuple(m.upper() for m in METHODS if hasattr(cls, m))


def enumerate_routes() -> tuple[dict[str, Any], dict[str, str]]:
    probed: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for route, callback in iter_routes():
        prefix = next((s for s in SKIPPED if (route.startswith(s) if s else route == "")), None)
        if prefix is not None:
            skipped[route] = prefix
        else:
            probed[route] = callback
    return probed, skipped


def test_probe_table_matches_the_resolver() -> None:
    routes, skipped = enumerate_routes()
    missing = sorted(set(routes) - set(PROBES))
    stale = sorted(set(PROBES) - set(routes))
    assert not missing, f"routes without a probe entry (add them to PROBES): {missing}"
    assert not stale, f"PROBES names routes that no longer exist: {stale}"
    for route, callback in routes.items():
        methods = implemented_methods(callback)
        if methods is not None:
            assert set(methods) == set(PROBES[route].methods), (route, methods, PROBES[route].methods)
    used = set(skipped.values())
    assert used >= set(SKIPPED) - {"static/"}, f"stale SKIPPED entries: {set(SKIPPED) - used - {'static/'}}"


# --- the two tenants -----------------------------------------------------------------------------


@dataclass
class Side:
    tenant: Any
    users: dict[str, Any] = field(default_factory=dict)  # role -> user
    memberships: dict[str, int] = field(default_factory=dict)  # role -> membership id
    invitation_id: int = 0
    invitation_token: str = ""
    invitation_email: str = ""
    key_id: int = 0
    key_secret: str = ""
    key_prefix: str = ""
    revoked_key_id: int = 0
    revoked_key_secret: str = ""
    revoked_key_prefix: str = ""
    event_id: int = 0
    datasets: DatasetSeed | None = None  # a dataset (raw + de-identified versions), grant, upload, reservation

    def object_ids(self) -> dict[str, int]:
        assert self.datasets is not None
        return {
            "member_id": self.memberships[Role.ANALYST],
            "invitation_id": self.invitation_id,
            "key_id": self.key_id,
            "event_id": self.event_id,
            **self.datasets.object_ids(),  # incl. job_id (a finished job) and model_id (its model version)
            # The de-identified version, under the jobs/ POST field that names it.
            "dataset_version": self.datasets.deid_version_id,
        }


def _seed(
    name: str,
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
    api_client_for: Callable[[Any], APIClient],
    grantee_slug: str,
) -> Side:
    from apps.audit.services import audit_record, audited_change

    tenant = make_tenant(slug=f"iso-{name}-{secrets.token_hex(3)}", name=f"Tenant {name.upper()} Confidential")
    side = Side(tenant=tenant)
    for role in policy.ROLES:
        user = make_user(email=f"{name}-{role}-{secrets.token_hex(3)}@{name}-corp.example")
        with tenant_scope(tenant.pk), audited_change():
            m = Membership.objects.create(tenant=tenant, user=user, role=role)
            audit_record(action="member.added", tenant=tenant, target=m, details={"fixture": True})
        side.users[role], side.memberships[role] = user, m.pk
    owner = side.users[Role.OWNER]
    with tenant_scope(tenant.pk):
        side.invitation_email = f"invitee-{secrets.token_hex(3)}@{name}-corp.example"
        inv, side.invitation_token = invitation_create(
            tenant=tenant, actor_role=Role.OWNER, invited_by=owner, email=side.invitation_email, role=Role.ANALYST
        )
        side.invitation_id = inv.pk
        created = api_key_create(
            tenant=tenant, created_by=owner, name=f"{name}-integration-key", scopes=["read", "write"], expires_at=None
        )
        side.key_id, side.key_secret, side.key_prefix = created.key.pk, created.secret, created.key.prefix
        revoked = api_key_create(
            tenant=tenant, created_by=owner, name=f"{name}-old-key", scopes=["read", "write"], expires_at=None
        )
        api_key_revoke(tenant=tenant, key=revoked.key)
        side.revoked_key_id, side.revoked_key_secret = revoked.key.pk, revoked.secret
        side.revoked_key_prefix = revoked.key.prefix
        side.event_id = AuditEvent.objects.filter(tenant=tenant).order_by("-id").values_list("id", flat=True)[0]
    # Grants go to a third tenant: a grant between A and B would legitimately show A's dataset to B
    # (shared-datasets); that is ISO-8's subject (tests/security/test_grants.py).
    side.datasets = seed_datasets(
        api_client_for(owner),
        tenant,
        name=f"{name.capitalize()} Confidential Cohort {secrets.token_hex(3)}",
        grantee_slug=grantee_slug,
    )
    return side


@dataclass
class World:
    a: Side
    b: Side
    removed_user: Any
    a_strings: list[str]

    def foreign_fields(self) -> dict[str, Any]:
        """A's identifiers under the names a careless API might honour (FK-like, nested)."""
        a, ids = self.a, self.a.object_ids()
        return {
            "tenant": a.tenant.pk,
            "tenant_id": a.tenant.pk,
            "tenant_slug": a.tenant.slug,
            "id": ids["member_id"],
            "user": a.users[Role.OWNER].pk,
            "user_id": a.users[Role.OWNER].pk,
            **ids,
            "ids": list(ids.values()),
            "items": [{"tenant_id": a.tenant.pk, "id": v} for v in ids.values()],
            "filters": {"tenant": a.tenant.slug, "chain": f"t{a.tenant.pk}"},
        }

    def foreign_query(self) -> dict[str, Any]:
        a, ids = self.a, self.a.object_ids()
        return {
            "tenant": a.tenant.pk,
            "tenant_id": a.tenant.pk,
            "tenant_slug": a.tenant.slug,
            "id": ids["member_id"],
            "user_id": a.users[Role.OWNER].pk,
            **ids,
            "chain": f"t{a.tenant.pk}",
        }

    def dataset_filter_query(self) -> dict[str, Any]:
        """Real filters of the dataset lists, matching A's dataset (must still only match B's)."""
        assert self.a.datasets is not None
        return {"q": self.a.datasets.name, "status": "all"}

    def audit_filter_query(self) -> dict[str, Any]:
        """Real filters of the audit list, pointing at A's rows (must still only match B's)."""
        a = self.a
        return {
            "target_id": a.memberships[Role.ANALYST],
            "actor_id": a.users[Role.OWNER].pk,
            "target_type": "tenancy.membership",
            "request_id": "x" * 8,
        }


@pytest.fixture
def world(
    make_tenant: Callable[..., Any], make_user: Callable[..., Any], api_client_for: Callable[[Any], APIClient]
) -> World:
    c = make_tenant(slug=f"iso-charlie-{secrets.token_hex(3)}", name="Tenant C (grantee of A and B)")
    a = _seed("alpha", make_tenant, make_user, api_client_for, c.slug)
    b = _seed("bravo", make_tenant, make_user, api_client_for, c.slug)
    removed = make_user(email=f"former-{secrets.token_hex(3)}@alpha-corp.example")
    from apps.audit.services import audit_record, audited_change

    with tenant_scope(a.tenant.pk):
        with audited_change():
            m = Membership.objects.create(tenant=a.tenant, user=removed, role=Role.ADMIN)
            audit_record(action="member.added", tenant=a.tenant, target=m, details={"fixture": True})
        membership_remove(tenant=a.tenant, actor_role=Role.OWNER, membership=m)
    a_strings = [
        a.tenant.slug,
        a.tenant.name,
        a.invitation_email,
        a.key_prefix,
        a.revoked_key_prefix,
        f"{'alpha'}-integration-key",
        *(u.email for u in a.users.values()),
        a.datasets.name,
        *a.datasets.content_sha256,
        a.datasets.job_name,
        a.datasets.model_sha256,
    ]
    with platform_scope():
        a_strings += list(AuditEvent.all_tenants.filter(tenant_id=a.tenant.pk).values_list("hash", flat=True))
    return World(a=a, b=b, removed_user=removed, a_strings=a_strings)


# --- snapshots of A's rows (superuser, committed state) ------------------------------------------


def snapshot_a(conn: Any, world: World) -> dict[str, Any]:
    """A's rows in every tenant table (plus A's tenant and users, and B's training rows)."""
    tid = world.a.tenant.pk
    snap: dict[str, Any] = {}
    for table in tenant_tables(conn):
        rows = conn.execute(f'SELECT to_jsonb(t) FROM "{table}" t WHERE tenant_id = %s ORDER BY id', [tid]).fetchall()
        snap[table] = [r[0] for r in rows]
    snap["tenancy_tenant"] = conn.execute("SELECT to_jsonb(t) FROM tenancy_tenant t WHERE id = %s", [tid]).fetchall()
    user_ids = [u.pk for u in world.a.users.values()]
    snap["accounts_user"] = [
        r[0]
        for r in conn.execute(
            "SELECT to_jsonb(u) - 'last_login' FROM accounts_user u WHERE id = ANY(%s) ORDER BY id", [user_ids]
        )
    ]
    # B's own training rows too: a job B starts naming A's dataset version (or any probe) must not
    # leave a job, event or model row behind in B's tenant either.
    for table in B_TRAINING_TABLES:
        rows = conn.execute(
            f'SELECT to_jsonb(t) FROM "{table}" t WHERE tenant_id = %s ORDER BY id', [world.b.tenant.pk]
        ).fetchall()
        snap[f"B:{table}"] = [r[0] for r in rows]
    return snap


B_TRAINING_TABLES = ("training_trainingjob", "training_jobevent", "training_modelversion")


def side_effects(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Differences in A's rows. A's audit chain may only have grown by denial events."""
    diffs: list[str] = []
    for table in sorted(set(before) | set(after)):
        old, new = before.get(table, []), after.get(table, [])
        if table == "audit_auditevent":
            if new[: len(old)] != old:
                diffs.append("audit_auditevent: existing A events changed")
            added = [e["action"] for e in new[len(old) :]]
            diffs += [
                f"audit_auditevent: non-denial event {a} appended to A's chain"
                for a in added
                if a not in DENIAL_ACTIONS
            ]
        elif old != new:
            diffs.append(f"{table}: {len(old)} rows before, {len(new)} after, content differs")
    return diffs


# --- identities and probes -----------------------------------------------------------------------


@dataclass
class Probe:
    route: str
    method: str
    identity: str
    variant: str
    path: str
    query: dict[str, Any] | None
    body: dict[str, Any] | None
    targets_a: bool  # the path (or token) addresses A's tenant or objects
    content: str = "json"  # how the body is encoded (RouteProbe.content)


def fill(route: str, slug: str, ids: dict[str, int]) -> str:
    return "/" + _PARAM_RE.sub(lambda m: slug if m["name"] == "tenant_slug" else str(ids[m["name"]]), route)


def lacking_role(route: str, method: str) -> str | None:
    """A role of A that may not do this route+method (None when every role may)."""
    from django.urls import resolve

    cls = resolve(fill(route, "x", {m["name"]: 1 for m in _PARAM_RE.finditer(route)})).func.cls
    action = cls.permission_actions.get(method) or cls.permission_action
    allowed = policy.MATRIX[action][0]
    return next((r for r in (Role.ANALYST, Role.INTEGRATOR, Role.AUDITOR, Role.ADMIN) if r not in allowed), None)


def build_probes(world: World, skipped_insider: list[str]) -> list[Probe]:
    a, b = world.a, world.b
    a_ids, b_ids = a.object_ids(), b.object_ids()
    probes: list[Probe] = []
    outsiders = ("b_owner", "b_key", "anonymous", "a_revoked_key", "a_removed_user")
    for route, spec in PROBES.items():
        for method in spec.methods:
            valid = resolve_own(spec.valid_body.get(method, {}), b_ids)
            has_body = method in ("POST", "PATCH", "PUT")
            body = {**valid, **world.foreign_fields()} if has_body else None
            content = spec.content.get(method, "json")
            vquery = spec.valid_query.get(method)

            def add(
                ident: str,
                variant: str,
                path: str,
                query: Any,
                body: Any,
                targets_a: bool,
                route: str = route,
                method: str = method,
                content: str = content,
            ) -> None:
                probes.append(Probe(route, method, ident, variant, path, query, body, targets_a, content))

            if spec.kind == "tenant":
                has_id = "<pk:" in route
                a_path = fill(route, a.tenant.slug, a_ids)
                idents = list(outsiders)
                role = lacking_role(route, method)
                if role is None:
                    skipped_insider.append(f"{method} {route}")
                else:
                    idents.append(f"a_{role}")
                for ident in idents:
                    add(ident, "path", a_path, vquery, body, True)
                    add(ident, "query", a_path, {**(vquery or {}), **world.foreign_query()}, None, True)
                # B's own tenant: A's object ids in the path, or A's ids only in the query/body.
                b_path_a_ids = fill(route, b.tenant.slug, a_ids)
                for ident in ("b_owner", "b_key"):
                    if has_id:
                        add(ident, "own-slug-a-id", b_path_a_ids, vquery, body, True)
                        add(
                            ident,
                            "own-slug-a-id+query",
                            b_path_a_ids,
                            {**(vquery or {}), **world.foreign_query()},
                            None,
                            True,
                        )
                        if has_body and valid:  # a body the API accepts, so only the path ids can refuse it
                            add(ident, "own-slug-a-id+valid-body", b_path_a_ids, vquery, dict(valid), True)
                    else:
                        add(ident, "own-query", b_path_a_ids, world.foreign_query(), None, False)
                        if has_body:
                            add(ident, "own-body", b_path_a_ids, None, body, False)
                        for fk in spec.body_fks if has_body else ():  # a valid body whose FK names A's object
                            add(ident, f"own-body-a-{fk}", b_path_a_ids, vquery, {**valid, fk: a_ids[fk]}, True)
                        if method == "GET" and route.endswith(("/datasets/", "/shared-datasets/")):
                            add(ident, "own-dataset-filters", b_path_a_ids, world.dataset_filter_query(), None, False)
                        if "audit-events" in route and method == "GET":
                            probes.append(
                                Probe(
                                    route,
                                    method,
                                    ident,
                                    "own-audit-filters",
                                    b_path_a_ids,
                                    world.audit_filter_query(),
                                    None,
                                    False,
                                )
                            )
            elif spec.kind == "accept":
                for ident in (*outsiders, "a_analyst"):
                    probes.append(
                        Probe(
                            route,
                            method,
                            ident,
                            "a-token",
                            "/" + route,
                            world.foreign_query(),
                            {"token": a.invitation_token, **world.foreign_fields()},
                            True,
                        )
                    )
                    probes.append(
                        Probe(
                            route, method, ident, "a-token-only", "/" + route, None, {"token": a.invitation_token}, True
                        )
                    )
            else:  # public and self routes: the caller's own context, A's ids in query and body
                for ident in outsiders:
                    probes.append(
                        Probe(route, method, ident, "own-query", "/" + route, world.foreign_query(), None, False)
                    )
                    if has_body or route.endswith("logout/"):
                        probes.append(
                            Probe(
                                route,
                                method,
                                ident,
                                "own-body",
                                "/" + route,
                                None,
                                {**valid, **world.foreign_fields()},
                                False,
                            )
                        )
    return probes


class Clients:
    """One client per identity, built lazily; rebuilt after a probe signs a session out."""

    def __init__(self, world: World, api_client_for: Callable[[Any], APIClient]) -> None:
        self.world, self.make, self.cache = world, api_client_for, {}

    def get(self, ident: str) -> APIClient:
        if ident not in self.cache:
            w = self.world
            principal: Any = {
                "b_owner": lambda: w.b.users[Role.OWNER],
                "b_key": lambda: w.b.key_secret,
                "anonymous": lambda: None,
                "a_revoked_key": lambda: w.a.revoked_key_secret,
                "a_removed_user": lambda: w.removed_user,
            }.get(ident, lambda: w.a.users[ident.removeprefix("a_")])()
            self.cache[ident] = self.make(principal)
        return self.cache[ident]

    def forget(self, ident: str) -> None:
        self.cache.pop(ident, None)


def send(
    client: APIClient,
    method: str,
    path: str,
    query: dict[str, Any] | None,
    body: dict[str, Any] | None,
    content: str = "json",
) -> Any:
    import json
    from urllib.parse import urlencode

    from tests.apps.datasets.helpers import named, table_csv

    url = path + ("?" + urlencode(query) if query else "")
    fn = getattr(client, method.lower())
    if body is None:
        return fn(url)
    if content == "multipart":
        form = {
            k: named(table_csv(4)) if v is FILE else json.dumps(v) if isinstance(v, dict | list) else v
            for k, v in body.items()
        }
        return fn(url, form, format="multipart")
    if content == "octet":
        return fn(url, json.dumps(body).encode(), content_type="application/octet-stream")
    return fn(url, body, format="json")


def leaked(world: World, content: bytes) -> list[str]:
    text = content.decode("utf-8", "replace")
    return [s for s in world.a_strings if s and s in text]


# --- the test ------------------------------------------------------------------------------------


def test_cross_tenant_probe_matrix(world: World, api_client_for: Callable[[Any], APIClient]) -> None:
    routes, skipped = enumerate_routes()
    covered = [r for r in routes if r in PROBES]
    skipped_insider: list[str] = []
    probes = build_probes(world, skipped_insider)
    clients = Clients(world, api_client_for)
    for ident in ("b_owner", "b_key", "anonymous", "a_revoked_key", "a_removed_user"):
        clients.get(ident)
    for role in policy.ROLES:
        if role != Role.OWNER:
            clients.get(f"a_{role}")

    admin = admin_connect()
    before = snapshot_a(admin, world)
    denials_before_all = denial_count(admin)
    results: list[dict[str, Any]] = []
    leaks: list[str] = []
    last = denials_before_all
    for p in probes:
        r = send(clients.get(p.identity), p.method, p.path, p.query, p.body, p.content)
        now = denial_count(admin)
        refused = r.status_code in REFUSED_STATUSES
        found = leaked(world, r.content)
        label = f"{p.identity} {p.method} {p.path} [{p.variant}] -> {r.status_code}"
        if p.targets_a and 200 <= r.status_code < 300:
            leaks.append(f"{label}: success on A's data")
        if found:
            leaks.append(f"{label}: body contains {found[:3]}")
        if r.status_code >= 500:
            leaks.append(f"{label}: server error")
        results.append(
            {
                "probe": label,
                "route": f"{p.method} {p.route}",
                "variant": p.variant,
                "status": r.status_code,
                "refused": refused,
                "targets_a": p.targets_a,
                "denials": now - last,
            }
        )
        last = now
        if p.route.endswith("auth/logout/") and r.status_code == 204:
            clients.forget(p.identity)
    after = snapshot_a(admin, world)
    effects = side_effects(before, after)

    # ISO-2: A's object vs an id/slug/token that does not exist, from B's owner (and B's key).
    a, b = world.a, world.b
    missing_ids = {k: 10**17 + secrets.randbelow(10**16) for k in a.object_ids()}
    missing_slug = f"iso-nope-{secrets.token_hex(4)}"
    oracle_pairs: list[tuple[str, str, str, str, dict[str, Any] | None, dict[str, Any] | None, str]] = []
    for route, spec in PROBES.items():
        for method in spec.methods:
            body = resolve_own(spec.valid_body.get(method, {}), b.object_ids()) or None
            query = spec.valid_query.get(method)
            content = spec.content.get(method, "json")
            if spec.kind == "tenant":
                pairs = [(fill(route, a.tenant.slug, a.object_ids()), fill(route, missing_slug, missing_ids))]
                if "<pk:" in route:
                    pairs.append((fill(route, a.tenant.slug, a.object_ids()), fill(route, a.tenant.slug, missing_ids)))
                    pairs.append((fill(route, b.tenant.slug, a.object_ids()), fill(route, b.tenant.slug, missing_ids)))
                for ident in ("b_owner", "b_key"):
                    for real, fake in pairs:
                        oracle_pairs.append((ident, method, real, fake, query, body, content))
    mismatches: list[str] = []
    comparisons = 0
    for ident, method, real, fake, query, body, content in oracle_pairs:
        c = clients.get(ident)
        r1, r2 = send(c, method, real, query, body, content), send(c, method, fake, query, body, content)
        comparisons += 1
        if (r1.status_code, r1.content, r1.get("Content-Type")) != (r2.status_code, r2.content, r2.get("Content-Type")):
            mismatches.append(f"{ident} {method} {real} ({r1.status_code}) vs {fake} ({r2.status_code})")
    c = clients.get("b_owner")
    r1 = send(c, "POST", "/api/v1/invitations/accept/", None, {"token": a.invitation_token})
    r2 = send(c, "POST", "/api/v1/invitations/accept/", None, {"token": "inv_" + secrets.token_urlsafe(32)})
    comparisons += 1
    if (r1.status_code, r1.content) != (r2.status_code, r2.content):
        mismatches.append(f"invitation accept: A's token {r1.status_code} vs unknown token {r2.status_code}")
    admin.close()

    refused = [x for x in results if x["refused"]]
    not_refused = [x for x in results if not x["refused"]]
    refused_without_event = [x["probe"] for x in refused if x["denials"] != 1]
    unrefused_with_event = [x["probe"] for x in not_refused if x["denials"] != 0]
    foreign = [x for x in results if x["targets_a"]]
    foreign_unrefused = [x["probe"] for x in foreign if not x["refused"] and x["status"] != 400]
    iso1 = {
        "routes_enumerated": len(routes),
        "routes_covered": len(covered),
        "routes_skipped_by_allow_list": {
            p: {"routes": n, "why": SKIPPED[p]} for p, n in sorted(Counter(skipped.values()).items())
        },
        "identities": [
            "b_owner",
            "b_key(read+write)",
            "anonymous",
            "a_revoked_key",
            "a_removed_user",
            "a_member_lacking_role",
        ],
        "probes": len(results),
        "probes_targeting_a": len(foreign),
        "probes_targeting_a_rejected_as_invalid_400": sum(1 for x in foreign if x["status"] == 400),
        "probes_targeting_a_rejected_as_invalid_400_details": [x["probe"] for x in foreign if x["status"] == 400],
        "probes_targeting_a_neither_refused_nor_invalid": len(foreign_unrefused),
        "probes_in_own_context": len(results) - len(foreign),
        "status_counts": dict(Counter(x["status"] for x in results)),
        "status_counts_per_route": {
            k: dict(v)
            for k, v in sorted(
                {
                    r: Counter(f"{x['variant']}:{x['status']}" for x in results if x["route"] == r)
                    for r in {x["route"] for x in results}
                }.items()
            )
        },
        "leaks": len(leaks),
        "leak_details": leaks[:50],
        "side_effects": len(effects),
        "side_effect_details": effects[:50],
        "insider_probe_skipped_every_role_allowed": skipped_insider,
        # B starting a job in its own tenant on A's de-identified version: refused as missing (404),
        # and no job row left in B's tenant (B's training rows are part of the side-effect snapshot).
        "job_create_naming_a_dataset_version": {
            x["probe"]: x["status"] for x in results if x["variant"] == "own-body-a-dataset_version"
        },
    }
    iso1_pass = len(covered) == len(routes) and not leaks and not effects and not foreign_unrefused
    write_report("ISO-1", iso1, iso1_pass)
    iso2 = {
        "comparisons": comparisons,
        "existence_oracle_mismatches": len(mismatches),
        "mismatch_details": mismatches[:50],
        "compared": "status, body bytes and Content-Type; A's id vs a nonexistent id under A's slug, under B's "
        "slug, and A's slug vs a nonexistent slug; A's invitation token vs an unknown token",
    }
    write_report("ISO-2", iso2, not mismatches)
    denial_events = last - denials_before_all
    aud3 = {
        "probes": len(results),
        "refused_probes": len(refused),
        "denial_events": denial_events,
        "refused_without_exactly_one_denial_event": len(refused_without_event),
        "not_refused_probes": len(not_refused),
        "not_refused_with_denial_event": len(unrefused_with_event),
        "not_refused_explained": (
            "probes that address the caller's own tenant or account and carry A's ids only in the query string "
            "or body (own-query/own-body/own-audit-filters), and public routes: they are answered 2xx with the "
            "caller's own data, or 400 for unknown fields, so nothing is denied and no denial event is due; "
            "also probes aimed at A whose body carries unknown fields (400 before any lookup, nothing "
            "revealed); none returned any of A's data"
        ),
        "not_refused_status_counts": dict(Counter(x["status"] for x in not_refused)),
        "details": (refused_without_event + unrefused_with_event)[:50],
    }
    aud3_pass = denial_events == len(refused) and not refused_without_event and not unrefused_with_event
    write_report("AUD-3", aud3, aud3_pass)

    assert len(covered) == len(routes)
    assert not leaks, "\n".join(leaks[:40])
    assert not effects, effects
    assert not mismatches, "\n".join(mismatches[:40])
    assert not refused_without_event, "\n".join(refused_without_event[:40])
    assert not unrefused_with_event, "\n".join(unrefused_with_event[:40])
    assert denial_events == len(refused)
    assert not foreign_unrefused, "\n".join(foreign_unrefused[:40])
    assert set(iso1["job_create_naming_a_dataset_version"].values()) == {404}, iso1[
        "job_create_naming_a_dataset_version"
    ]
