"""A job's event log: one append (next per-job sequence number), published live after commit."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from apps.tenancy.scope import tenant_scope
from apps.training.live import publish_job_event
from apps.training.models import JobEvent, TrainingJob


def append_event(
    job_id: int,
    tenant_id: int,
    kind: str,
    payload: dict[str, Any],
    step: int = 0,
    epoch: int = 0,
    *,
    progress: dict[str, Any] | None = None,
) -> int:
    """Append one event with the next sequence number of the job (atomic counter on the job row).
    Its own short transaction: a running job's progress is visible at once."""
    with tenant_scope(tenant_id):
        updated = TrainingJob.objects.filter(pk=job_id).select_for_update().values_list("event_seq", flat=True).first()
        seq = int(updated or 0) + 1
        extra = {"progress": progress} if progress is not None else {}
        TrainingJob.objects.filter(pk=job_id).update(event_seq=seq, **extra)
        event = JobEvent.objects.create(
            tenant_id=tenant_id, job_id=job_id, seq=seq, kind=kind, step=step, epoch=epoch, payload=payload
        )
        transaction.on_commit(lambda: publish_job_event(event))
    return seq


_event = append_event  # the name tests and older callers use
