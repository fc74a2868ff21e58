"""The tenant scope: a ContextVar read by TenantScopedManager, mirrored into PostgreSQL settings.

Every entry point (API view, consumer, task, command) sets the scope; nothing defaults to "all".
The database side is set per transaction with ``set_config(name, value, true)`` so a pooled
connection never carries one request's tenant into the next. Each value goes with its MAC
(``app.<name>_mac``, see ``apps.tenancy.rls``), computed here and nowhere else: PostgreSQL ignores
a setting without a valid MAC, so SQL running as the app role cannot widen its own scope.

Platform work (console, scheduler, sweeps, verification) is not a setting: ``platform_scope`` sends
the ORM to the ``platform`` connection alias, which logs in as the ``cohort_platform`` role.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache

from django.db import connections, transaction

_tenant: ContextVar[int | None] = ContextVar("cohort_tenant_id", default=None)
# The connection alias the ORM uses now (read by apps.tenancy.routing.ScopeRouter).
_db_alias: ContextVar[str] = ContextVar("cohort_db_alias", default="default")
PLATFORM_ALIAS = "platform"

# PostgreSQL settings read by the RLS policies (see apps.tenancy.rls).
GUC_TENANT = "app.tenant_id"
GUC_USER = "app.user_id"
GUC_LOOKUP = "app.lookup_key"
GUC_AUDIT_CONTEXT = "app.audit_context"
_ALL_GUCS = (GUC_TENANT, GUC_USER, GUC_LOOKUP, GUC_AUDIT_CONTEXT)
_NAMES = {"tenant_id": GUC_TENANT, "user_id": GUC_USER, "lookup_key": GUC_LOOKUP, "audit_context": GUC_AUDIT_CONTEXT}


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


def db_alias() -> str:
    """The connection alias in use: ``platform`` inside ``platform_scope``, else ``default``."""
    return _db_alias.get()


@lru_cache(maxsize=4)
def _context_key(key_b64: str) -> bytes:
    key = base64.b64decode(key_b64)
    if not 16 <= len(key) <= 64:
        raise ValueError("COHORT_DB_CONTEXT_KEY must decode to 16..64 bytes")
    return key


def context_mac(*, backend_pid: int, name: str, value: str) -> str:
    """The MAC that makes ``app.<name> = value`` count on the backend ``backend_pid``."""
    from django.conf import settings

    msg = f"cohort-ctx-v1|{backend_pid}|{name}|{value}".encode()
    return hmac.new(_context_key(settings.COHORT_DB_CONTEXT_KEY), msg, hashlib.sha256).hexdigest()


def set_db_context(using: str | None = None, **values: object) -> None:
    """Set RLS settings for the current transaction only (``set_config(..., true)``), each with
    its MAC. Keys: tenant_id, user_id, lookup_key, audit_context. None clears a value.

    ``using``: the connection (default: the one in use, ``db_alias()``).
    """
    conn = connections[using or db_alias()]
    if not conn.in_atomic_block:
        raise RuntimeError("set_db_context needs a transaction: RLS settings are transaction-local")
    conn.ensure_connection()
    pid = int(conn.connection.info.backend_pid)
    parts: list[str] = []
    params: list[str] = []
    for key, value in values.items():
        guc = _NAMES[key]
        if isinstance(value, bool):
            raise TypeError(f"{key} is not a flag")
        text = "" if value is None else str(value)
        mac = context_mac(backend_pid=pid, name=key, value=text) if text else ""
        parts.append("set_config(%s, %s, true), set_config(%s, %s, true)")
        params.extend([guc, text, guc + "_mac", mac])
    if parts:
        with conn.cursor() as cur:
            cur.execute("SELECT " + ", ".join(parts), params)


def get_db_context(using: str | None = None) -> dict[str, str]:
    """Return the current values of the RLS settings (for tests and diagnostics)."""
    with connections[using or db_alias()].cursor() as cur:
        cur.execute("SELECT " + ", ".join("current_setting(%s, true)" for _ in _ALL_GUCS), list(_ALL_GUCS))
        row = cur.fetchone()
    return {name: (value or "") for name, value in zip(_ALL_GUCS, row or (), strict=False)}


def activate_tenant(tenant_id: int, *, user_id: int | None = None) -> object:
    """Put a tenant in scope (app and DB). Returns a token for ``deactivate_tenant``."""
    token = _tenant.set(int(tenant_id))
    if connections["default"].in_atomic_block:
        set_db_context("default", tenant_id=tenant_id, user_id=user_id)
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
    set_db_context("default", tenant_id=_tenant.get(), user_id=None)


# --- the platform role ----------------------------------------------------------------------------
# Production: ``platform_scope`` switches the ORM to the ``platform`` alias (its own login role and
# connection). Test suites that wrap each test in one transaction (pytest-django) cannot see across
# two connections, so there the default connection logs in as a test role that is a member of both
# serving roles and switches with ``SET LOCAL ROLE`` (COHORT_PLATFORM_SHARED_CONNECTION, set by
# tests/conftest.py only). Either way the platform's rows are reached by its role, never a setting.
_shared_role: ContextVar[str] = ContextVar("cohort_shared_role", default="app")


def _shared_connection() -> bool:
    from django.conf import settings

    return bool(getattr(settings, "COHORT_PLATFORM_SHARED_CONNECTION", False))


def _set_local_role(which: str) -> None:
    from django.conf import settings

    from apps.tenancy.rls import PLATFORM_ROLE, quote_ident

    role = PLATFORM_ROLE if which == "platform" else str(settings.COHORT_APP_DB_ROLE)
    conn = connections["default"]
    if conn.in_atomic_block and not conn.needs_rollback and conn.connection is not None:
        with conn.cursor() as cur:
            cur.execute(f"SET LOCAL ROLE {quote_ident(role)}")


@contextmanager
def _shared_role_block(which: str) -> Iterator[None]:
    with transaction.atomic(using="default"):
        before = _shared_role.get()
        token = _shared_role.set(which)
        if before != which:
            _set_local_role(which)
        try:
            yield
        except BaseException:
            # The atomic block rolls back (to its savepoint), which undoes SET LOCAL ROLE too.
            _shared_role.reset(token)
            raise
        _shared_role.reset(token)
        if before != which:
            _set_local_role(before)


@contextmanager
def tenant_scope(tenant_id: int, *, user_id: int | None = None) -> Iterator[None]:
    """Run a block with one tenant in scope, on the app role's connection, inside a transaction
    with the RLS settings set (also inside ``platform_scope``: tenant work never runs as the
    platform)."""
    if tenant_id is None:
        raise TenantScopeMissing("tenant_scope(None)")
    alias_token = _db_alias.set("default")
    shared = _shared_connection()
    # A scope that opens the outermost transaction ends with it, and its transaction-local
    # settings with it: no round trip to reset them (a nested scope resets to the outer tenant).
    outermost = not shared and not connections["default"].in_atomic_block
    try:
        with _shared_role_block("app") if shared else transaction.atomic(using="default"):
            token = activate_tenant(tenant_id, user_id=user_id)
            try:
                yield
            finally:
                deactivate_tenant(token, transaction_ends=outermost)
    finally:
        _db_alias.reset(alias_token)


def platform_on_own_connection() -> bool:
    """True in production: platform work uses its own connection (its own transaction)."""
    return not _shared_connection()


def in_platform_scope() -> bool:
    """True inside ``platform_scope`` (and not inside a ``tenant_scope`` nested in it)."""
    return db_alias() == PLATFORM_ALIAS or _shared_role.get() == "platform"


@contextmanager
def platform_scope() -> Iterator[None]:
    """Platform scope: the ORM (and ``db_alias()``) use the ``platform`` connection, which logs in
    as the platform role, in one transaction on it. That role reads every tenant's rows and
    writes only what ``apps.tenancy.rls.PLATFORM_WRITES`` allows; no setting turns it on.

    Callers are allow-listed per function (tests/architecture/test_tenancy_invariants.py).
    """
    if _shared_connection():
        with _shared_role_block("platform"):
            yield
        return
    token = _db_alias.set(PLATFORM_ALIAS)
    try:
        with transaction.atomic(using=PLATFORM_ALIAS):
            yield
    finally:
        _db_alias.reset(token)


@contextmanager
def lookup_scope(lookup_key: str) -> Iterator[None]:
    """Make the single row whose lookup column equals ``lookup_key`` visible (API key prefix,
    invitation token hash) before any tenant is known."""
    with transaction.atomic(using="default"):
        set_db_context("default", lookup_key=lookup_key)
        try:
            yield
        finally:
            conn = connections["default"]
            if conn.in_atomic_block and not conn.needs_rollback and conn.connection is not None:
                set_db_context("default", lookup_key=None)
