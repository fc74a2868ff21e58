"""Publishes a job's events to its channel group (after the event is committed)."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.training.models import JobEvent

logger = logging.getLogger(__name__)


def job_group(tenant_id: int, job_id: int) -> str:
    return f"t{int(tenant_id)}.job{int(job_id)}"


def event_dict(e: JobEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "kind": e.kind,
        "step": e.step,
        "epoch": e.epoch,
        "payload": e.payload,
        "created_at": e.created_at.isoformat(),
    }


def publish_job_event(event: JobEvent) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        group = job_group(event.tenant_id, event.job_id)
        async_to_sync(layer.group_send)(group, {"type": "job.event", "event": event_dict(event), "group": group})
    except Exception:  # best effort: the event is persisted; clients resync by sequence number
        logger.warning("could not publish a job event to the live channel", exc_info=True)
