"""Publishes a job's events to its channel group (after the event is committed)."""

from __future__ import annotations

from typing import Any

from apps.common.publisher import publish
from apps.training.models import JobEvent


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
    """Hand the committed event to the process's sender thread (``apps.common.publisher``: in
    order, one connection per process; best effort, clients resync by sequence number)."""
    publish(job_group(event.tenant_id, event.job_id), {"type": "job.event", "event": event_dict(event)})
