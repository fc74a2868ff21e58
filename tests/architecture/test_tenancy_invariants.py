"""Structural invariants of tenancy, checked from the code itself.

* every concrete model with a foreign key to Tenant is ``TenantOwned`` and its default manager is the
  explicit ``all_tenants`` bypass (so Django internals never use the scoped manager by accident);
* ``.all_tenants`` is used only in an allow-listed set of modules;
* every tenant route is served by a ``TenantApi`` subclass; ``TenantApi`` subclasses cannot override
  ``get_queryset``/``get_object``; each declares a permission action for every HTTP method it
  implements, and every such action exists in ``policy.MATRIX``;
* the import-linter contracts hold.
"""

from __future__ import annotations

import re
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
ALL_TENANTS_ALLOWED: dict[str, str] = {
    "apps/tenancy/models.py": "defines the manager",
    "apps/tenancy/scope.py": "names it in the TenantScopeMissing message",
    "apps/tenancy/selectors.py": "a user's own memberships across tenants (RLS: user_id clause)",
    "apps/tenancy/services.py": "invitation lookup by token hash before the tenant is known (lookup scope)",
    "apps/accounts/authentication.py": "API key lookup by prefix before the tenant is known (lookup scope)",
    "apps/audit/management/commands/audit_verify.py": "platform command: maps chain problems to event ids "
    "(platform scope)",
    "apps/vault/services.py": "rotate-kek re-wraps every tenant's data keys (platform scope)",
    "apps/training/services.py": "a job's dataset version may be another tenant's (live process grant, checked by "
    "dataset_access; RLS shows only granted de-identified versions)",
    "apps/training/scheduler.py": "admission across tenants: job metadata (queue, slots, timestamps), quotas and "
    "usage in platform scope (the training tables' RLS admits it), under one advisory lock",
    "apps/vault/management/commands/keys.py": "platform command: key status and KEK retirement (platform scope)",
    "apps/datasets/selectors.py": "datasets shared with the tenant in scope: filtered by a live grant, and RLS "
    "(cohort_dataset_granted) enforces the same rule",
    "apps/datasets/access.py": "a budget reservation the tenant made against another tenant's dataset "
    "(consumer = tenant in scope; RLS consumer clause)",
    "apps/datasets/services.py": "budget usage over all consumers (platform scope), a grantee's reservation row "
    "in the owner's ledger (RLS WITH CHECK: live process grant), the retention purge (platform scope)",
}
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
# Reviewed second tenant FKs: a row owned by ``tenant`` that names another tenant on purpose. Each
# has its own RLS clause (apps/datasets/migrations/0002_rls.py) giving that tenant narrow access.
CROSS_TENANT_FKS: dict[str, str] = {
    "DatasetGrant.grantee": "the tenant a dataset is shared with (sees its live grants)",
    "BudgetReservation.consumer": "the tenant spending another tenant's privacy budget (sees its own reservations)",
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


def test_all_tenants_is_used_only_in_allow_listed_modules() -> None:
    pattern = re.compile(r"\ball_tenants\b")
    users: dict[str, int] = {}
    for path in sorted(APPS_DIR.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if "/migrations/" in rel:
            continue
        n = len(pattern.findall(path.read_text(encoding="utf-8")))
        if n:
            users[rel] = n
    unexpected = sorted(set(users) - set(ALL_TENANTS_ALLOWED))
    assert not unexpected, (
        f".all_tenants used outside the allow-list: {unexpected}. Use the scoped `objects` manager, or move "
        "the query into an allow-listed selector/service and add it to ALL_TENANTS_ALLOWED with a reason."
    )
    stale = sorted(set(ALL_TENANTS_ALLOWED) - set(users))
    assert not stale, f"allow-listed modules that no longer use all_tenants (remove them): {stale}"


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
