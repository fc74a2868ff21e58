"""The base of every tenant websocket stream (``/ws/v1/tenants/<slug>/…``): authenticate, check
membership and role at the handshake, join the stream's channel groups and the tenant's control
group, replay persisted events after ``?after=N``, and number what it sends.

A subclass names the role ``permission`` it needs and may override:

* :meth:`TenantStreamConsumer.authorize_target` (sync, in the tenant's scope): the object the
  stream is about exists for the tenant (else 4404) — it may remember what it read on ``self``;
* :meth:`TenantStreamConsumer.stream_groups`: the channel groups to join (besides the control group);
* :meth:`TenantStreamConsumer.replay` (sync): persisted events after ``after``, oldest first;
* :meth:`TenantStreamConsumer.on_open` / :meth:`TenantStreamConsumer.on_close`.

Who: a member's session or an API key (``apps.accounts.websocket``); a key's socket closes with 4401
when the key expires and with 4403 when it is revoked.

Close codes: 4401 unauthenticated (or the API key expired); 4404 unknown tenant, non-member or
unknown object (alike, so a socket is no oracle); 4403 suspended tenant, a role without the
permission, or — later — a ``tenant.control`` close (membership ended, tenant suspended, the API
key revoked).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.audit.live import control_group
from apps.common.channel_layer import ReleasesChannel
from apps.tenancy import policy
from apps.tenancy.models import Tenant
from apps.tenancy.scope import tenant_scope
from apps.tenancy.selectors import membership_for

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


def authorize_member(user: Any, slug: str, action: str) -> tuple[int | None, int]:
    """The handshake check of every tenant stream: (tenant_id, close code). An unknown tenant and
    a non-member answer alike (4404); a suspended tenant or a role without ``action``: 4403. An
    API key (``ApiKeyPrincipal``) acts as the REST API lets it: its own tenant only (another is
    4404), as the integrator role within its scopes (else 4403)."""
    tenant_id, code, _reason, _url_tenant = _check_member(user, slug, action)
    return tenant_id, code


def _check_member(user: Any, slug: str, action: str) -> tuple[int | None, int, str, int | None]:
    """:func:`authorize_member`, with the refusal's reason and the URL's tenant (for the audit)."""
    with transaction.atomic():
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            return None, CLOSE_NOT_FOUND, "unknown_tenant", None
        if getattr(user, "key_id", None) is not None:
            if user.tenant_id != tenant.pk:
                return None, CLOSE_NOT_FOUND, "api_key_other_tenant", tenant.pk
            if not tenant.is_active:
                return None, CLOSE_FORBIDDEN, "tenant_suspended", tenant.pk
            if not policy.api_key_allows(user.scopes, action):
                return None, CLOSE_FORBIDDEN, "api_key_scope", tenant.pk
            return tenant.pk, 0, "", tenant.pk
        m = membership_for(tenant_id=tenant.pk, user_id=user.pk)
        if m is None or not user.is_active:
            return None, CLOSE_NOT_FOUND, "not_a_member" if m is None else "inactive_user", tenant.pk
        if not tenant.is_active:
            return None, CLOSE_FORBIDDEN, "tenant_suspended", tenant.pk
        if not policy.role_allows(m.role, action):
            return None, CLOSE_FORBIDDEN, "role", tenant.pk
        return tenant.pk, 0, "", tenant.pk


def _audit_refusal(user: Any, tenant_id: int | None, reason: str, action: str, path: str) -> None:
    """A refused handshake is an ``access.denied`` event, as a refused REST request is."""
    from apps.audit.services import audit_record
    from apps.common.context import Actor

    actor = (
        user.actor
        if getattr(user, "key_id", None) is not None
        else Actor(type="user", id=str(user.pk), label=getattr(user, "email", "") or None)
    )
    with transaction.atomic():
        audit_record(
            action="access.denied",
            tenant=tenant_id,
            outcome="denied",
            actor=actor,
            details={"reason": reason, "permission": action, "method": "WEBSOCKET", "route": path[:200]},
        )


def _key_state(prefix: str) -> str:
    """``"live"``, ``"revoked"`` (or gone) or ``"expired"``: the API key's row, by its visible
    prefix, as the authentication reads it."""
    from apps.accounts.models import ApiKey
    from apps.tenancy.scope import lookup_scope

    with lookup_scope(prefix):
        key = ApiKey.all_tenants.filter(prefix=prefix).values("revoked_at", "expires_at").first()
    if key is None or key["revoked_at"] is not None:
        return "revoked"
    if key["expires_at"] is not None and key["expires_at"] <= timezone.now():
        return "expired"
    return "live"


def key_recheck_seconds() -> float:
    """How often an API key's open socket looks at the key again (the backstop of the control
    group's revocation message, which the channel layer may drop)."""
    return float(getattr(settings, "COHORT_WS_KEY_RECHECK_SECONDS", 5.0))


class TenantStreamConsumer(ReleasesChannel, AsyncJsonWebsocketConsumer):
    """Read-only tenant stream; see the module docstring for the hooks."""

    permission = ""  # the role permission (apps.tenancy.policy) a member needs
    replays = False  # whether ``?after=N`` replays persisted events
    tenant_id: int | None = None
    user_id: Any = None
    last_seq = 0
    groups_joined: tuple[str, ...] = ()
    _key_watch: asyncio.Task[None] | None = None  # an API key's (kept: a task nobody holds may vanish)

    # --- hooks -----------------------------------------------------------------------------------
    def parse_route(self, kwargs: dict[str, Any]) -> None:
        """Read the route's own arguments onto ``self``; ``ValueError``/``KeyError``: 4404."""

    def authorize_target(self, tenant_id: int) -> bool:
        """In the tenant's scope: does the stream's object exist for this tenant?"""
        return True

    def stream_groups(self, tenant_id: int) -> list[str]:
        return []

    def replay(self, tenant_id: int, after: int) -> list[dict[str, Any]]:
        return []

    async def on_open(self) -> None:
        return None

    async def on_close(self) -> None:
        return None

    # --- the handshake ---------------------------------------------------------------------------
    def _authorize(self, user: Any, slug: str) -> tuple[int | None, int]:
        tenant_id, code, reason, url_tenant = _check_member(user, slug, self.permission)
        if tenant_id is None:
            _audit_refusal(user, url_tenant, reason, self.permission, self.scope.get("path", ""))
            return None, code
        with tenant_scope(tenant_id):
            found = self.authorize_target(tenant_id)
        if not found:
            _audit_refusal(user, tenant_id, "not_found", self.permission, self.scope.get("path", ""))
            return None, CLOSE_NOT_FOUND
        return tenant_id, 0

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        kwargs = self.scope["url_route"]["kwargs"]
        try:
            self.parse_route(kwargs)
            after = 0
            if self.replays:
                after = int(parse_qs(self.scope.get("query_string", b"").decode()).get("after", ["0"])[0])
        except (KeyError, ValueError):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        tenant_id, code = await database_sync_to_async(self._authorize)(user, kwargs["tenant_slug"])
        if tenant_id is None:
            await self.close(code=code)
            return
        self.tenant_id, self.user_id = tenant_id, user.pk
        self.groups_joined = (*self.stream_groups(tenant_id), control_group(tenant_id))
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        # A key revoked between the middleware's check and joining the control group was announced
        # to nobody: look again now that a revocation can reach this socket.
        is_key = getattr(user, "key_id", None) is not None
        if is_key and await database_sync_to_async(_key_state)(user.prefix) != "live":
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self.accept()
        if is_key:  # the socket does not outlive the key: its expiry, or a revocation message lost
            self._key_watch = asyncio.create_task(self._watch_key(user.prefix, user.expires_at))
        await self.on_open()
        if self.replays:
            self.last_seq = max(0, after)
            for event in await database_sync_to_async(self._replay_scoped)(tenant_id, self.last_seq):
                await self.send_event(event["seq"], event)

    def _replay_scoped(self, tenant_id: int, after: int) -> list[dict[str, Any]]:
        with tenant_scope(tenant_id):
            return self.replay(tenant_id, after)

    async def _watch_key(self, prefix: str, expires: Any) -> None:
        """Every :func:`key_recheck_seconds` (and at the key's expiry) look at the key again: a
        revoked key's socket closes with 4403 even if the control group's message was lost, an
        expired one's with 4401."""
        every = key_recheck_seconds()
        while True:
            wait = every
            if expires is not None:
                wait = min(wait, max(0.0, (expires - timezone.now()).total_seconds()))
            await asyncio.sleep(wait)
            state = await database_sync_to_async(_key_state)(prefix)
            if state != "live":
                await self.close(code=CLOSE_UNAUTHENTICATED if state == "expired" else CLOSE_FORBIDDEN)
                return

    async def disconnect(self, code: int) -> None:
        if self._key_watch is not None and self._key_watch is not asyncio.current_task():
            self._key_watch.cancel()
        if self.tenant_id is not None:
            await self.on_close()
            for group in self.groups_joined:
                await self.channel_layer.group_discard(group, self.channel_name)

    # --- messages --------------------------------------------------------------------------------
    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Read-only stream: clients send nothing (commands go through the REST API).
        await self.send_json({"type": "error", "message": "this stream is read-only"})

    message_type = "event"  # the ``type`` of what :meth:`send_event` sends

    async def send_event(self, seq: int | None, event: dict[str, Any]) -> None:
        """Send one event numbered ``seq`` (the event's own, gap-free sequence; duplicates of what
        was sent already — replay and live overlap — are dropped) or, with ``seq=None``, the
        connection's next number."""
        if seq is None:
            seq = self.last_seq + 1
        elif seq <= self.last_seq:
            return
        self.last_seq = seq
        await self.send_json({"type": self.message_type, "seq": seq, "event": event})

    async def tenant_control(self, message: dict[str, Any]) -> None:
        if message.get("action") == "close" and message.get("user_id") in (None, self.user_id):
            await self.close(code=CLOSE_FORBIDDEN)
