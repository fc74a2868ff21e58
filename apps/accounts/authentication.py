"""DRF authentication: API keys (``Authorization: Bearer coh_…``) and CSRF-checked sessions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from apps.accounts import keys
from apps.accounts.models import ApiKey
from apps.common.context import Actor, set_actor
from apps.tenancy.models import Tenant
from apps.tenancy.scope import lookup_scope, set_db_context


@dataclass
class ApiKeyPrincipal:
    """What ``request.user`` is for an API-key request: a key of one tenant, never a person."""

    key_id: int
    tenant_id: int
    prefix: str
    name: str
    scopes: list[str] = field(default_factory=list)
    created_by_id: int | None = None
    expires_at: datetime | None = None  # a websocket opened with the key closes then
    is_authenticated: bool = True
    is_active: bool = True
    is_staff: bool = False
    is_superuser: bool = False
    is_anonymous: bool = False

    @property
    def pk(self) -> str:
        return f"key:{self.prefix}"

    @property
    def actor(self) -> Actor:
        return Actor(type="api_key", id=str(self.key_id), label=f"{self.name} ({self.prefix})")


def _deny(reason: str, tenant_id: int | None, prefix: str | None) -> exceptions.AuthenticationFailed:
    from apps.audit.services import audit_record

    audit_record(
        action="api_key.use_denied",
        tenant=tenant_id,
        outcome="denied",
        actor=Actor(type="api_key", id=None, label=prefix),
        details={"reason": reason, "key_prefix": prefix},
    )
    exc = exceptions.AuthenticationFailed("Invalid, expired or revoked API key.", code="invalid_api_key")
    exc.audit = {"skip": True}  # type: ignore[attr-defined]
    return exc


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="cohort"'

    def authenticate(self, request: Request) -> tuple[ApiKeyPrincipal, ApiKey] | None:
        return authenticate_bearer(request.META.get("HTTP_AUTHORIZATION", ""))


def authenticate_bearer(header: str) -> tuple[ApiKeyPrincipal, ApiKey] | None:
    """An ``Authorization`` header's API key: None when it is not a bearer header; raises
    (``AuthenticationFailed``, audited as ``api_key.use_denied``) for a malformed, unknown, revoked
    or expired key or a suspended tenant. The REST API and the websocket handshake both use it."""
    parts = header.split()
    if not parts or parts[0].lower() != "bearer":
        return None
    if len(parts) != 2:
        raise _deny("malformed_header", None, None)
    raw = parts[1]
    prefix = keys.parse(raw)
    if prefix is None:
        raise _deny("malformed_key", None, None)
    with lookup_scope(prefix):
        key = ApiKey.all_tenants.filter(prefix=prefix).first()
    if key is None or not keys.matches(raw, key.key_hash):
        raise _deny("unknown_key", None, prefix)
    if key.revoked_at is not None:
        raise _deny("revoked", key.tenant_id, prefix)
    now = timezone.now()
    if key.expires_at is not None and key.expires_at <= now:
        raise _deny("expired", key.tenant_id, prefix)
    tenant = Tenant.objects.get(pk=key.tenant_id)
    if not tenant.is_active:
        raise _deny("tenant_suspended", key.tenant_id, prefix)
    if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
        # Throttled bookkeeping; declared so row-capture does not log every use.
        set_db_context(tenant_id=key.tenant_id, audit_context="api_key.last_used")
        ApiKey.all_tenants.filter(pk=key.pk).update(last_used_at=now)
        set_db_context(tenant_id=None, audit_context=None)
    principal = ApiKeyPrincipal(
        key_id=key.pk,
        tenant_id=key.tenant_id,
        prefix=key.prefix,
        name=key.name,
        scopes=list(key.scopes),
        created_by_id=key.created_by_id,
        expires_at=key.expires_at,
    )
    set_actor(principal.actor)
    return principal, key


class CsrfSessionAuthentication(authentication.SessionAuthentication):
    """Django sessions with CSRF enforced on unsafe methods; sets the audit actor."""

    def authenticate(self, request: Request) -> tuple[object, None] | None:
        result = super().authenticate(request)
        if result is not None:
            user = result[0]
            set_actor(Actor(type="user", id=str(user.pk), label=user.email))
        return result

    def authenticate_header(self, request: Request) -> str:
        return 'Session realm="cohort"'
