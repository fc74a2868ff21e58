"""Live audit stream for a tenant's auditors: authenticate, authorize, forward. No writes.

Built on :class:`apps.common.stream.TenantStreamConsumer` (handshake, control-group closes,
numbering); the close codes and :func:`authorize_member` are re-exported from there."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async

from apps.audit.live import audit_group, listeners_changed
from apps.common.stream import (
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    TenantStreamConsumer,
    authorize_member,
)

__all__ = ["CLOSE_FORBIDDEN", "CLOSE_NOT_FOUND", "CLOSE_UNAUTHENTICATED", "AuditStreamConsumer", "authorize_member"]


class AuditStreamConsumer(TenantStreamConsumer):
    """Every audit event of the tenant as it is written, numbered per connection (``seq`` 1, 2, …;
    no replay: the REST list is the durable view)."""

    permission = "audit.list"
    message_type = "audit.event"

    def stream_groups(self, tenant_id: int) -> list[str]:
        return [audit_group(tenant_id)]

    async def on_open(self) -> None:
        assert self.tenant_id is not None
        await sync_to_async(listeners_changed, thread_sensitive=False)(self.tenant_id, 1)

    async def on_close(self) -> None:
        assert self.tenant_id is not None
        await sync_to_async(listeners_changed, thread_sensitive=False)(self.tenant_id, -1)

    async def audit_event(self, message: dict[str, Any]) -> None:
        await self.send_event(None, message["event"])
