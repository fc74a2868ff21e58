"""Live job stream: ``/ws/v1/tenants/<slug>/jobs/<id>/?after=N``. Replays the job's persisted
events after sequence number N, then forwards new ones as they are written. Every message carries
the job's own ``seq`` (gap-free per job), so a client that sees a gap (the channel layer drops
messages when a consumer falls behind) resyncs through ``GET …/jobs/<id>/events/?after=``."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.audit.consumers import CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED, authorize_member
from apps.audit.live import control_group
from apps.tenancy.scope import tenant_scope
from apps.training.live import event_dict, job_group
from apps.training.models import JobEvent, TrainingJob

REPLAY_MAX = 1000


@database_sync_to_async
def _authorize(user: Any, slug: str, job_id: int) -> tuple[int | None, int]:
    """(tenant_id, close code). Unknown tenant, non-member and another tenant's job answer alike."""
    tenant_id, code = authorize_member(user, slug, "job.list")
    if tenant_id is None:
        return None, code
    with tenant_scope(tenant_id):
        if not TrainingJob.objects.filter(pk=job_id).exists():
            return None, CLOSE_NOT_FOUND
    return tenant_id, 0


@database_sync_to_async
def _replay(tenant_id: int, job_id: int, after: int) -> list[dict[str, Any]]:
    with tenant_scope(tenant_id):
        return [
            event_dict(e) for e in JobEvent.objects.filter(job_id=job_id, seq__gt=after).order_by("seq")[:REPLAY_MAX]
        ]


class JobStreamConsumer(AsyncJsonWebsocketConsumer):
    tenant_id: int | None = None
    job_id = 0
    last_seq = 0

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        kwargs = self.scope["url_route"]["kwargs"]
        try:
            self.job_id = int(kwargs["job_id"])
            after = int(parse_qs(self.scope.get("query_string", b"").decode()).get("after", ["0"])[0])
        except (KeyError, ValueError):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        tenant_id, code = await _authorize(user, kwargs["tenant_slug"], self.job_id)
        if tenant_id is None:
            await self.close(code=code)
            return
        self.tenant_id, self.user_id = tenant_id, user.pk
        await self.channel_layer.group_add(job_group(tenant_id, self.job_id), self.channel_name)
        await self.channel_layer.group_add(control_group(tenant_id), self.channel_name)
        await self.accept()
        self.last_seq = max(0, after)
        for event in await _replay(tenant_id, self.job_id, self.last_seq):
            await self._send(event)

    async def disconnect(self, code: int) -> None:
        if self.tenant_id is not None:
            await self.channel_layer.group_discard(job_group(self.tenant_id, self.job_id), self.channel_name)
            await self.channel_layer.group_discard(control_group(self.tenant_id), self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.send_json({"type": "error", "message": "this stream is read-only"})

    async def _send(self, event: dict[str, Any]) -> None:
        if event["seq"] <= self.last_seq:
            return  # already sent (replay and live overlap)
        self.last_seq = event["seq"]
        await self.send_json({"type": "job.event", "seq": event["seq"], "event": event})

    async def job_event(self, message: dict[str, Any]) -> None:
        await self._send(message["event"])

    async def tenant_control(self, message: dict[str, Any]) -> None:
        if message.get("action") == "close" and message.get("user_id") in (None, self.user_id):
            await self.close(code=CLOSE_FORBIDDEN)
