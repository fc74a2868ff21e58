"""Writes for users and API keys; login with atomic Redis lockout; all audited."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth import authenticate, login, logout
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from rest_framework import exceptions

from apps.accounts import keys
from apps.accounts.models import ApiKey, User
from apps.audit.services import audit_record, audited_change
from apps.common import ratelimit
from apps.common.context import Actor, get_context
from apps.common.exceptions import Conflict, Invalid
from apps.tenancy.models import Tenant

logger = logging.getLogger(__name__)


def user_create(
    *, email: str, password: str | None, full_name: str = "", is_staff: bool = False, actor: Actor | None = None
) -> User:
    with audited_change():
        user = User.objects.create_user(email=email, password=password, full_name=full_name, is_staff=is_staff)
        audit_record(action="user.created", actor=actor, target=user, details={"is_staff": is_staff})
    return user


class LoginLocked(exceptions.Throttled):
    default_detail = "Too many failed sign-in attempts. Try again later."
    default_code = "login_locked"


def _account_key(email: str) -> str:
    return "login:acct:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def _ip_key() -> str:
    return f"login:ip:{get_context().source_ip or '?'}"


def login_rate_check(*, email: str, path: str | None = None) -> None:
    """Count one sign-in attempt per account and per source IP; raise LoginLocked over the limit.

    Every attempt is counted before the password is checked: INCR is atomic, so N parallel guesses
    get N distinct counts and at most the limit of them ever reach the hasher. Shared by the API
    login and the console's login form. The refusal is audited (``auth.login_locked``).
    """
    window = settings.COHORT_LOGIN_LOCKOUT_SECONDS
    acct_count, acct_ttl = ratelimit.hit(_account_key(email), window)
    ip_count, ip_ttl = ratelimit.hit(_ip_key(), window)
    if acct_count > settings.COHORT_LOGIN_MAX_FAILURES or ip_count > settings.COHORT_LOGIN_IP_MAX_FAILURES:
        details = {"reason": "too_many_failures"} | ({"path": path} if path else {})
        audit_record(
            action="auth.login_locked",
            outcome="denied",
            actor=Actor(type="anonymous", label=email.strip().lower()[:255]),
            details=details,
        )
        exc = LoginLocked(wait=max(acct_ttl, ip_ttl) or window)
        exc.audit = {"skip": True}  # type: ignore[attr-defined]
        raise exc


def login_rate_success(*, email: str) -> None:
    """A successful sign-in clears the account's counter and gives back its IP attempt."""
    ratelimit.redis_client().decr(f"cohort:rl:{_ip_key()}")
    ratelimit.clear(_account_key(email))


def login_attempt(*, request: HttpRequest, email: str, password: str) -> User:
    """Check lockout, authenticate, start a session. Every outcome is audited."""
    login_rate_check(email=email)
    user = authenticate(request, username=email.strip().lower(), password=password)
    if user is None:  # the user_login_failed signal has audited it
        exc2 = exceptions.AuthenticationFailed("Invalid e-mail or password.", code="invalid_credentials")
        exc2.audit = {"skip": True}  # type: ignore[attr-defined]
        raise exc2
    login_rate_success(email=email)
    login(request, user)  # the user_logged_in signal audits it; last_login is bookkeeping
    return user


def logout_user(*, request: HttpRequest) -> None:
    logout(request)  # the user_logged_out signal audits it


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str


def api_key_create(
    *, tenant: Tenant, created_by: User, name: str, scopes: list[str], expires_at: datetime | None
) -> CreatedKey:
    """Create a key; the full secret is returned once and only its HMAC is stored."""
    if expires_at is not None and expires_at <= timezone.now():
        raise Invalid("Must be in the future.", field="expires_at")
    bad = sorted(set(scopes) - set(ApiKey.Scope.values))
    if bad or not scopes:
        raise Invalid(f"Choose from {ApiKey.Scope.values}.", field="scopes")
    secret, prefix = keys.generate()
    with audited_change():
        key = ApiKey.objects.create(
            tenant=tenant,
            name=name,
            prefix=prefix,
            key_hash=keys.hash_key(secret),
            scopes=sorted(set(scopes)),
            created_by=created_by,
            expires_at=expires_at,
        )
        audit_record(
            action="api_key.created",
            tenant=tenant,
            target=key,
            details={
                "key_prefix": prefix,
                "scopes": key.scopes,
                "name": name,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
    return CreatedKey(key=key, secret=secret)


def api_key_revoke(*, tenant: Tenant, key: ApiKey) -> ApiKey:
    with audited_change():
        key = ApiKey.objects.select_for_update().get(pk=key.pk)
        if key.revoked_at is not None:
            raise Conflict("The key is already revoked.", code="already_revoked")
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_record(action="api_key.revoked", tenant=tenant, target=key, details={"key_prefix": key.prefix})
        # Its open websockets close (their user is ``key:<prefix>``, ``ApiKeyPrincipal.pk``).
        tenant_id, principal = tenant.pk, f"key:{key.prefix}"
        transaction.on_commit(lambda: _close_key_sockets(tenant_id, principal))
    return key


def _close_key_sockets(tenant_id: int, principal: str) -> None:
    from apps.audit.live import publish_tenant_control

    try:  # after the commit: the revocation stands; the handshake refuses the key from now on anyway
        publish_tenant_control(tenant_id, {"action": "close", "reason": "api_key_revoked", "user_id": principal})
    except Exception:
        logger.warning("could not close the revoked key's websockets", exc_info=True)
