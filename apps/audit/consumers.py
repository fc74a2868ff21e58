"""Live audit stream for a tenant's auditors: authenticate, authorize, forward. No writes.

Built on :class:`apps.common.stream.TenantStreamConsumer` (handshake, control-group closes,
numbering); the close codes and :func:`authorize_member` are re-exported from there."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async

from apps.audit.live import audit_group, listeners_changed
from apps.common.socket import Event, StreamHandler
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


# --- the one endpoint's activity stream (apps.common.socket) ---------------------------------------
SUMMARY_FIELDS = ("action", "outcome", "actor_type", "actor_label", "target_type", "target_id")


def _activity_event(e: dict[str, Any]) -> Event:
    return Event(seq=int(e["seq"]), type="activity.event", time=e["created_at"],
                 payload={k: e.get(k) for k in SUMMARY_FIELDS})  # fmt: skip


class ActivityStream(StreamHandler):
    """``tenants/<slug>/activity``: the tenant's audit log as it is written, numbered by its chain
    (gap-free, so a client resumes after any number), as summaries: action, outcome, actor,
    target; never the details. For the roles that read the audit log (``audit.list``)."""

    kind = "activity"
    permission = "audit.list"
    has_object = False

    @property
    def chain(self) -> str:
        return f"t{int(self.tenant_id)}"

    def authorize(self) -> bool:
        return True

    def groups(self) -> list[str]:
        return [audit_group(self.tenant_id)]

    def between(self, after: int, before: int | None, limit: int) -> list[Event]:
        from apps.audit.models import AuditEvent

        rows = AuditEvent.objects.filter(chain=self.chain, seq__gt=after)
        if before is not None:
            rows = rows.filter(seq__lt=before)
        fields = ("seq", "created_at", *SUMMARY_FIELDS)
        return [
            _activity_event({**r, "created_at": r["created_at"].isoformat()})
            for r in rows.order_by("seq").values(*fields)[:limit]
        ]

    def latest(self) -> int:
        from django.db.models import Max

        from apps.audit.models import AuditEvent

        return int(AuditEvent.objects.filter(chain=self.chain).aggregate(m=Max("seq"))["m"] or 0)

    def from_message(self, message: dict[str, Any]) -> Event | None:
        event = message.get("event") or {}
        if message.get("type") != "audit.event" or "seq" not in event:
            return None
        return _activity_event(event)

    def on_open(self) -> None:  # writers publish only while someone listens
        listeners_changed(self.tenant_id, 1)

    def on_close(self) -> None:
        listeners_changed(self.tenant_id, -1)
