"""Celery adapters for training: ids in, the service does the work."""

from __future__ import annotations

from celery import shared_task


@shared_task(
    name="training.run_job",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(),
    max_retries=0,
)
def run_job(tenant_id: int, job_id: int) -> str:
    """Run (or resume) one training job. Idempotent: a duplicate delivery finds the job claimed or
    finished and does nothing; a redelivery after the worker died resumes from the checkpoint."""
    from apps.training.services import run_job as run

    return run(tenant_id, job_id)


@shared_task(name="training.schedule", acks_late=True, ignore_result=True)
def schedule() -> dict[str, int]:
    """Beat: admit waiting jobs, re-enqueue admitted jobs that lost their message or worker."""
    from apps.training.scheduler import schedule as run_pass

    done = run_pass()
    return {"admitted": len(done.admitted), "requeued": len(done.requeued), "failed": len(done.failed)}


@shared_task(
    name="training.run_node",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(),
    max_retries=0,
)
def run_node(tenant_id: int, job_id: int, node_rank: int) -> str:
    """Node ``node_rank`` (>= 1) of a multi-node job: joins node 0's rendezvous for the current
    attempt. Stale or duplicate deliveries do nothing."""
    from apps.training.services import run_node_task

    return run_node_task(tenant_id, job_id, node_rank)
