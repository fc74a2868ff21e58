"""Live audit stream for a tenant's auditors: authenticate, authorize, forward. No writes."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db import transaction

from apps.audit.live import audit_group, control_group, listeners_changed
from apps.tenancy import policy
from apps.tenancy.models import Tenant
from apps.tenancy.selectors import membership_for

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


def authorize_member(user: Any, slug: str, action: str) -> tuple[int | None, int]:
    """The handshake check of every tenant stream: (tenant_id, close code). An unknown tenant and
    a non-member answer alike (4404); a suspended tenant or a role without ``action``: 4403."""
    with transaction.atomic():
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            return None, CLOSE_NOT_FOUND
        m = membership_for(tenant_id=tenant.pk, user_id=user.pk)
        if m is None or not user.is_active:
            return None, CLOSE_NOT_FOUND
        if not tenant.is_active or not policy.role_allows(m.role, action):
            return None, CLOSE_FORBIDDEN
        return tenant.pk, 0


@database_sync_to_async
def _authorize(user: Any, slug: str) -> tuple[int | None, int]:
    return authorize_member(user, slug, "audit.list")


class AuditStreamConsumer(AsyncJsonWebsocketConsumer):
    tenant_id: int | None = None
    seq = 0

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        slug = self.scope["url_route"]["kwargs"]["tenant_slug"]
        tenant_id, code = await _authorize(user, slug)
        if tenant_id is None:
            await self.close(code=code)
            return
        self.tenant_id = tenant_id
        self.user_id = user.pk
        await self.channel_layer.group_add(audit_group(tenant_id), self.channel_name)
        await self.channel_layer.group_add(control_group(tenant_id), self.channel_name)
        await self.accept()
        await sync_to_async(listeners_changed, thread_sensitive=False)(tenant_id, 1)

    async def disconnect(self, code: int) -> None:
        if self.tenant_id is not None:
            await sync_to_async(listeners_changed, thread_sensitive=False)(self.tenant_id, -1)
            await self.channel_layer.group_discard(audit_group(self.tenant_id), self.channel_name)
            await self.channel_layer.group_discard(control_group(self.tenant_id), self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Read-only stream: clients send nothing (commands go through the REST API).
        await self.send_json({"type": "error", "message": "this stream is read-only"})

    async def audit_event(self, message: dict[str, Any]) -> None:
        self.seq += 1
        await self.send_json({"type": "audit.event", "seq": self.seq, "event": message["event"]})

    async def tenant_control(self, message: dict[str, Any]) -> None:
        if message.get("action") == "close" and message.get("user_id") in (None, self.user_id):
            await self.close(code=CLOSE_FORBIDDEN)
