"""Celery adapters for federations: ids in, the services do the work.

``federation.site_round`` runs on queue ``fl`` (or ``fl.<owner slug>`` for an owner's own worker);
``federation.advance`` and the beat ``federation.sweep`` on ``default``. All are idempotent: a
duplicate delivery finds the slot taken or done, or the round already closed.
"""

from __future__ import annotations

from celery import shared_task

from apps.federation.services import rounds


@shared_task(name=rounds.SITE_TASK, acks_late=True, reject_on_worker_lost=True, max_retries=0)
def site_round(tenant_id: int, slot_id: int) -> str:
    """One site's work for one round (statistics, or evaluate and train)."""
    return rounds.run_site_round(tenant_id, slot_id)


@shared_task(name=rounds.ADVANCE_TASK, acks_late=True, ignore_result=True, max_retries=0)
def advance(tenant_id: int, federation_id: int) -> str:
    """Close the open round when it may close; open the next."""
    return rounds.advance(tenant_id, federation_id)


@shared_task(name="federation.sweep", acks_late=True, ignore_result=True)
def sweep() -> dict[str, int]:
    """Beat: deadlines, lost site tasks."""
    return rounds.sweep()
