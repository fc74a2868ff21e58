"""Structural invariants of tenancy, checked from the code itself.

* every concrete model with a foreign key to Tenant is ``TenantOwned`` and its default manager is the
  explicit ``all_tenants`` bypass (so Django internals never use the scoped manager by accident);
* ``.all_tenants`` and ``platform_scope()`` are used only in allow-listed functions;
* every tenant route is served by a ``TenantApi`` subclass; ``TenantApi`` subclasses cannot override
  ``get_queryset``/``get_object``; each declares a permission action for every HTTP method it
  implements, and every such action exists in ``policy.MATRIX``;
* the import-linter contracts hold.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.db import models
from django.urls import URLPattern, URLResolver, get_resolver

from apps.tenancy import policy
from apps.tenancy.api.base import BaseApi, TenantApi
from apps.tenancy.models import Tenant, TenantOwned

ROOT = Path(__file__).resolve().parents[2]
APPS_DIR = ROOT / "apps"

# Modules that may name the all-tenants manager, and why. Anything else must go through the scoped
# ``objects`` manager (or a selector/service in one of these modules).
# Per function, not per file: a new bypass inside an allow-listed module still fails the test.
# "path::Qualified.name" -> why that function may read across the tenant scope.
_LOOKUP = "lookup before the tenant is known (signed lookup-key clause)"
_GRANTED = "rows of another tenant shared with the tenant in scope (RLS: cohort_dataset_granted / live grant)"
_FED = "RLS: the coordinator and the sites' owners of the same federation"
ALL_TENANTS_ALLOWED: dict[str, str] = {
    "apps/accounts/authentication.py::authenticate_bearer": "API key by prefix (REST and websocket): " + _LOOKUP,
    "apps/common/stream.py::_key_state": "a websocket's API key, revoked since its check? " + _LOOKUP,
    "apps/tenancy/services.py::invitation_accept": "invitation by token hash: " + _LOOKUP,
    "apps/tenancy/selectors.py::membership_for": "the user's own membership (RLS user_id clause)",
    "apps/tenancy/selectors.py::tenant_list_for_user": "the user's own memberships in every tenant (user_id clause)",
    "apps/audit/management/commands/audit_verify.py::Command._describe": "platform command: problem -> event id",
    "apps/vault/services.py::rewrap_all": "rotate-kek re-wraps every tenant's data keys (platform scope)",
    "apps/vault/management/commands/keys.py::Command.do_status": "platform command: key status (platform scope)",
    "apps/vault/management/commands/keys.py::Command.do_rotate_kek": "platform command: KEK retirement",
    "apps/training/selectors.py::usable_version": "a job's dataset version may be a grantor's: " + _GRANTED,
    "apps/training/services/runner.py::settle_privacy": "a DP job's reservation is on the dataset owner's ledger: "
    + _GRANTED,
    "apps/training/scheduler.py::_admit": "admission across tenants from job metadata (platform role)",
    "apps/training/scheduler.py::_requeue_lost": "lost jobs of every tenant (platform role)",
    "apps/datasets/access.py::access_reservation": "a reservation the tenant made on another's dataset (consumer)",
    "apps/datasets/selectors.py::budget_for": "a grantor's budget: " + _GRANTED,
    "apps/datasets/selectors.py::dataset_access": "a grantor's dataset: " + _GRANTED,
    "apps/datasets/selectors.py::dataset_for_federation": "a grantor's dataset (federate grant): " + _GRANTED,
    "apps/datasets/selectors.py::latest_deidentified": "a grantor's released version: " + _GRANTED,
    "apps/datasets/selectors.py::live_grants": "grants addressed to the tenant in scope (grantee clause)",
    "apps/datasets/selectors.py::reservation_list": "the tenant's reservations on others' budgets (consumer clause)",
    "apps/datasets/selectors.py::shared_dataset_get": "a dataset shared with the tenant: " + _GRANTED,
    "apps/datasets/selectors.py::shared_dataset_list": "datasets shared with the tenant: " + _GRANTED,
    "apps/datasets/services/budget.py::_check_allotment": "the consumer's own reservations on a grantor's budget",
    "apps/datasets/services/budget.py::budget_reserve": "a grantee's reservation row in the owner's ledger (WITH CHECK)",
    "apps/datasets/services/budget.py::budget_settle": "settling a reservation of either side of the grant",
    "apps/datasets/services/uploads.py::expire_uploads": "expired upload sessions of every tenant (platform scope)",
    "apps/datasets/services/datasets.py::purge_expired": "the retention purge's due datasets (platform scope)",
    # Federations span tenants: a site row belongs to the dataset owner, the federation and its rounds
    # to the coordinator; RLS lets each side see the other's rows of a shared federation only.
    "apps/federation/selectors.py::federation_list": "federations coordinated or joined: " + _FED,
    "apps/federation/selectors.py::federation_sites": "a federation's sites (owners' rows): " + _FED,
    "apps/federation/selectors.py::round_list": "the coordinator's rounds, read by a site owner: " + _FED,
    "apps/federation/selectors.py::slots_of": "slots, each side its own (RLS site/coordinator clauses): " + _FED,
    "apps/federation/selectors.py::event_list": "the coordinator's event stream, read by a site owner: " + _FED,
    "apps/federation/services/governance.py::federation_create": "site rows created for the owners: " + _FED,
    "apps/federation/services/governance.py::federation_start": "the sites of the coordinator's federation: " + _FED,
    "apps/federation/services/governance.py::site_decide": "the owner reads the coordinator's federation: " + _FED,
    "apps/federation/services/governance.py::site_revoke": "the owner reads the coordinator's federation: " + _FED,
    "apps/federation/services/prepared_store.py::save": "is the owner's site still active: " + _FED,
    "apps/federation/services/rounds.py::_drop_withdrawn": "the coordinator drops owners' sites: " + _FED,
    "apps/federation/services/rounds.py::_settle_budgets": "reservations on the owners' ledgers: " + _FED,
    "apps/federation/services/rounds.py::_site_of": "the slot's site (an owner's row): " + _FED,
    "apps/federation/services/rounds.py::advance": "the round's sites (owners' rows): " + _FED,
    "apps/federation/services/rounds.py::finish_locked": "the sites of a finishing federation: " + _FED,
    "apps/federation/services/rounds.py::open_round": "selected sites' last round (owners' rows): " + _FED,
    "apps/federation/services/rounds.py::_register_model": "the lineage of the sites (owners' rows): " + _FED,
    "apps/federation/services/rounds.py::sweep": "running federations of every tenant (platform role, read)",
    "apps/federation/services/admission.py::_pass": "site-task admission from slot metadata of every coordinator "
    "(platform role, read; writes in each coordinator's scope)",
}
# Where platform work may start (the platform role's connection): per function, with the reason.
PLATFORM_SCOPE_ALLOWED: dict[str, str] = {
    "apps/common/admin_site.py::CohortAdminSite.admin_view.scoped": "the compliance console (staff + TOTP)",
    "apps/training/scheduler.py::schedule": "the scheduler pass (admission, re-queue)",
    "apps/datasets/services/uploads.py::expire_uploads": "sweep: expired upload sessions",
    "apps/datasets/services/datasets.py::purge_expired": "sweep: retention purge",
    "apps/audit/verification.py::audit_verify": "verification of every chain",
    "apps/federation/services/rounds.py::sweep": "beat sweep: round deadlines and expired site leases",
    "apps/federation/services/admission.py::admit_sites": "the site-task admission pass (fl pool, quotas)",
    "apps/audit/verification.py::checkpoint_create": "signing every chain's head",
    "apps/audit/monitoring.py::verify_all_chains": "the scheduled verification of every chain",
    "apps/audit/status.py::_status_from_log": "the last verification's platform event, for /readyz",
    "apps/audit/management/commands/audit_verify.py::Command._describe": "platform command",
    "apps/audit/management/commands/audit_verify.py::Command._tenant_id": "platform command: slug -> id",
    "apps/vault/services.py::rewrap_all": "KEK rotation",
    "apps/vault/management/commands/keys.py::Command.do_status": "platform command: key status",
    "apps/vault/management/commands/keys.py::Command.do_rotate_kek": "platform command: KEK retirement",
}
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
# Reviewed second tenant FKs: a row owned by ``tenant`` that names another tenant on purpose. Each
# has its own RLS clause (apps/datasets/migrations/0002_rls.py) giving that tenant narrow access.
CROSS_TENANT_FKS: dict[str, str] = {
    "DatasetGrant.grantee": "the tenant a dataset is shared with (sees its live grants)",
    "BudgetReservation.consumer": "the tenant spending another tenant's privacy budget (sees its own reservations)",
    "FederationSite.coordinator": "the federation's tenant (sees and creates the site rows naming it; "
    "approval columns are the owner's: trigger in apps/federation/migrations/0002_rls.py)",
}


def _our_models() -> list[type[models.Model]]:
    return [m for m in django_apps.get_models() if m.__module__.startswith("apps.")]


def test_tenant_models_are_tenant_owned_with_the_bypass_as_default_manager() -> None:
    problems: list[str] = []
    checked = 0
    for model in _our_models():
        tenant_fks = [
            f for f in model._meta.get_fields() if isinstance(f, models.ForeignKey) and f.related_model is Tenant
        ]
        if not tenant_fks:
            continue
        checked += 1
        if not issubclass(model, TenantOwned):
            problems.append(f"{model.__name__} has a tenant FK but does not subclass TenantOwned")
            continue
        extra = [f.name for f in tenant_fks if f"{model.__name__}.{f.name}" not in CROSS_TENANT_FKS]
        if extra != ["tenant"]:
            problems.append(f"{model.__name__}: tenant FKs {[f.name for f in tenant_fks]} (expected exactly 'tenant')")
        if model._meta.default_manager.name != "all_tenants":
            problems.append(f"{model.__name__}: default manager is {model._meta.default_manager.name!r}")
        if model._meta.base_manager.name != "all_tenants":
            problems.append(f"{model.__name__}: base manager is {model._meta.base_manager.name!r}")
        if type(model._default_manager).__name__ != "Manager":
            problems.append(f"{model.__name__}: default manager class {type(model._default_manager).__name__}")
        if type(model.objects).__name__ != "TenantScopedManager":
            problems.append(f"{model.__name__}.objects is {type(model.objects).__name__}, not the scoped manager")
    assert checked >= 5, f"only {checked} tenant models found"
    assert not problems, "\n".join(problems)


def _bypass_sites(attr: str, call: str) -> dict[str, set[str]]:
    """``{"all_tenants": {"path::func", ...}, "platform_scope": {...}}`` over apps/ (migrations aside)."""
    import ast

    out: dict[str, set[str]] = {attr: set(), call: set()}
    for path in sorted(APPS_DIR.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if "/migrations/" in rel or rel == "apps/tenancy/scope.py":
            continue

        def visit(node: ast.AST, stack: list[str], rel: str = rel) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    visit(child, [*stack, child.name])
                    continue
                site = f"{rel}::{'.'.join(stack) or '<module>'}"
                if isinstance(child, ast.Attribute) and child.attr == attr:
                    out[attr].add(site)
                if isinstance(child, ast.Call):
                    f = child.func
                    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                    if name == call:
                        out[call].add(site)
                visit(child, stack)

        visit(ast.parse(path.read_text(encoding="utf-8")), [])
    return out


def test_all_tenants_and_platform_scope_only_in_allow_listed_functions() -> None:
    sites = _bypass_sites("all_tenants", "platform_scope")
    for name, allowed in (("all_tenants", ALL_TENANTS_ALLOWED), ("platform_scope", PLATFORM_SCOPE_ALLOWED)):
        unexpected = sorted(sites[name] - set(allowed) - {"apps/tenancy/models.py::<module>"})
        assert not unexpected, (
            f"{name} used outside the per-function allow-list: {unexpected}. Use the tenant scope, or add the "
            f"function to the allow-list in this file with the reason it must reach across tenants."
        )
        stale = sorted(set(allowed) - sites[name])
        assert not stale, f"allow-listed functions that no longer use {name} (remove them): {stale}"


def _all_subclasses(cls: type) -> list[type]:
    out: list[type] = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def _routes(patterns: list[Any] | None = None, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for p in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(p, URLResolver):
            out += _routes(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            out.append((prefix + str(p.pattern), p.callback))
    return out


def _api_views() -> list[type]:
    get_resolver().url_patterns  # noqa: B018  (imports every view module)
    return [c for c in _all_subclasses(TenantApi) if c.__module__.startswith("apps.")]


def test_tenant_routes_are_served_by_tenant_api() -> None:
    tenant_routes = [(r, cb) for r, cb in _routes() if "<slug:tenant_slug>" in r or "tenant_slug" in r]
    assert tenant_routes
    for route, callback in tenant_routes:
        cls = getattr(callback, "cls", None)
        assert cls is not None and issubclass(cls, TenantApi), f"{route} is not served by a TenantApi subclass"
    for route, callback in _routes():
        cls = getattr(callback, "cls", None)
        if route.startswith("api/v1/") and cls is not None:
            assert issubclass(cls, BaseApi), f"{route}: {cls.__name__} bypasses BaseApi"


@pytest.mark.parametrize("name", ["get_queryset", "get_object"])
def test_tenant_api_subclasses_may_not_override_object_fetching(name: str) -> None:
    with pytest.raises(TypeError, match=name):
        type("Sneaky", (TenantApi,), {name: lambda self: None, "permission_action": "tenant.view"})


def test_every_tenant_api_method_has_a_known_permission_action() -> None:
    views = _api_views()
    assert len(views) >= 10, [v.__name__ for v in views]
    problems: list[str] = []
    for view in views:
        for method in HTTP_METHODS:
            if not callable(getattr(view, method, None)):
                continue
            action = view.permission_actions.get(method.upper()) or view.permission_action
            if not action:
                problems.append(f"{view.__name__}.{method}: no permission action")
            elif action not in policy.MATRIX:
                problems.append(f"{view.__name__}.{method}: action {action!r} is not in policy.MATRIX")
        for method in view.permission_actions:
            if not callable(getattr(view, method.lower(), None)):
                problems.append(f"{view.__name__}: permission_actions names {method}, which it does not implement")
    assert not problems, "\n".join(problems)


def test_import_linter_contracts_hold() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout, result.stdout[-2000:]
