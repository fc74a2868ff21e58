"""Celery adapters for training: ids in, the service does the work.

Retry policy: the services raise :class:`~apps.common.exceptions.Retryable` for a transient
failure (the message is redelivered: ``acks_late``, and the scheduler re-enqueues a job whose
lease expired; the next attempt resumes from its checkpoint) and record a
:class:`~apps.common.exceptions.RunFailed` on the job instead of raising it. Celery's own retries
stay off (``max_retries=0``): the job's ``max_restarts`` bounds the attempts.
"""

from __future__ import annotations

from celery import shared_task

from apps.training import dispatch
from apps.training.scheduler import schedule as run_pass
from apps.training.services import run_job as run
from apps.training.services import run_node_task


@shared_task(
    name=dispatch.RUN_JOB,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(),
    max_retries=0,
)
def run_job(tenant_id: int, job_id: int) -> str:
    """Run (or resume) one training job. Idempotent: a duplicate delivery finds the job claimed or
    finished and does nothing; a redelivery after the worker died resumes from the checkpoint."""
    return run(tenant_id, job_id)


@shared_task(name=dispatch.SCHEDULE, acks_late=True, ignore_result=True)
def schedule() -> dict[str, int]:
    """Beat: admit waiting jobs, re-enqueue admitted jobs that lost their message or worker."""
    done = run_pass()
    return {"admitted": len(done.admitted), "requeued": len(done.requeued), "failed": len(done.failed)}


@shared_task(
    name=dispatch.RUN_NODE,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(),
    max_retries=0,
)
def run_node(tenant_id: int, job_id: int, node_rank: int) -> str:
    """Node ``node_rank`` (>= 1) of a multi-node job: joins node 0's rendezvous for the current
    attempt. Stale or duplicate deliveries do nothing."""
    return run_node_task(tenant_id, job_id, node_rank)
