"""The tenant scope: a ContextVar read by TenantScopedManager, mirrored into PostgreSQL GUCs.

Every entry point (API view, consumer, task, command) sets the scope; nothing defaults to "all".
The database side is set per transaction with ``set_config(name, value, true)`` so a pooled
connection never carries one request's tenant into the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.db import connections, transaction

_tenant: ContextVar[int | None] = ContextVar("cohort_tenant_id", default=None)

# PostgreSQL settings read by the RLS policies (see apps.tenancy.rls).
GUC_TENANT = "app.tenant_id"
GUC_USER = "app.user_id"
GUC_PLATFORM = "app.platform"
GUC_LOOKUP = "app.lookup_key"
GUC_AUDIT_CONTEXT = "app.audit_context"
_ALL_GUCS = (GUC_TENANT, GUC_USER, GUC_PLATFORM, GUC_LOOKUP, GUC_AUDIT_CONTEXT)


class TenantScopeMissing(RuntimeError):
    """A tenant-owned model was queried with no tenant in scope."""

    def __init__(self, model_name: str) -> None:
        super().__init__(
            f"{model_name}.objects used with no tenant in scope: use tenant_scope(...) "
            "or, in an allow-listed place, the explicit all_tenants manager"
        )


def current_tenant_id() -> int | None:
    """Return the tenant id in scope, or None."""
    return _tenant.get()


def set_db_context(using: str = "default", **values: object) -> None:
    """Set RLS settings for the current transaction only (``set_config(..., true)``).

    Keys: tenant_id, user_id, platform (bool), lookup_key, audit_context. A value of None clears it.
    """
    conn = connections[using]
    if not conn.in_atomic_block:
        raise RuntimeError("set_db_context needs a transaction: RLS settings are transaction-local")
    names = {
        "tenant_id": GUC_TENANT,
        "user_id": GUC_USER,
        "platform": GUC_PLATFORM,
        "lookup_key": GUC_LOOKUP,
        "audit_context": GUC_AUDIT_CONTEXT,
    }
    parts: list[str] = []
    params: list[str] = []
    for key, value in values.items():
        guc = names[key]
        text = ("on" if value else "") if isinstance(value, bool) else ("" if value is None else str(value))
        parts.append("set_config(%s, %s, true)")
        params.extend([guc, text])
    if parts:
        with conn.cursor() as cur:
            cur.execute("SELECT " + ", ".join(parts), params)


def get_db_context(using: str = "default") -> dict[str, str]:
    """Return the current values of the RLS settings (for tests and diagnostics)."""
    with connections[using].cursor() as cur:
        cur.execute("SELECT " + ", ".join("current_setting(%s, true)" for _ in _ALL_GUCS), list(_ALL_GUCS))
        row = cur.fetchone()
    return {name: (value or "") for name, value in zip(_ALL_GUCS, row or (), strict=False)}


def activate_tenant(tenant_id: int, *, user_id: int | None = None) -> object:
    """Put a tenant in scope (app and DB). Returns a token for ``deactivate_tenant``."""
    token = _tenant.set(int(tenant_id))
    if connections["default"].in_atomic_block:
        set_db_context(tenant_id=tenant_id, user_id=user_id)
    return token


def deactivate_tenant(token: object, *, transaction_ends: bool = False) -> None:
    """Undo ``activate_tenant``: the app scope and, if still in the transaction, the DB settings.

    ``transaction_ends``: the caller's outermost transaction (a request's) ends right after this,
    and transaction-local settings end with it, so the extra round trip is skipped. Inside an outer
    transaction (a test's, a task's) the settings are always reset.
    """
    _tenant.reset(token)  # type: ignore[arg-type]
    conn = connections["default"]
    if not (conn.in_atomic_block and not conn.needs_rollback and conn.connection is not None):
        return
    if transaction_ends and not conn.savepoint_ids:
        return
    set_db_context(tenant_id=_tenant.get(), user_id=None)


@contextmanager
def tenant_scope(tenant_id: int, *, user_id: int | None = None) -> Iterator[None]:
    """Run a block with one tenant in scope, inside a transaction with the RLS settings set."""
    if tenant_id is None:
        raise TenantScopeMissing("tenant_scope(None)")
    with transaction.atomic():
        token = activate_tenant(tenant_id, user_id=user_id)
        try:
            yield
        finally:
            deactivate_tenant(token)


@contextmanager
def platform_scope(*, using: str = "default") -> Iterator[None]:
    """Platform (compliance console) scope: read audit/membership metadata across tenants.

    Tenant *data* tables never honour it; those need break-glass (a tenant scope with a reason).
    """
    with transaction.atomic(using=using):
        was_on = get_db_context(using).get(GUC_PLATFORM) == "on"
        set_db_context(using=using, platform=True)
        try:
            yield
        finally:
            conn = connections[using]
            if conn.in_atomic_block and not conn.needs_rollback and conn.connection is not None:
                set_db_context(using=using, platform=was_on)


@contextmanager
def lookup_scope(lookup_key: str) -> Iterator[None]:
    """Make the single row whose lookup column equals ``lookup_key`` visible (API key prefix,
    invitation token hash) before any tenant is known."""
    with transaction.atomic():
        set_db_context(lookup_key=lookup_key)
        try:
            yield
        finally:
            conn = connections["default"]
            if conn.in_atomic_block and not conn.needs_rollback and conn.connection is not None:
                set_db_context(lookup_key=None)
