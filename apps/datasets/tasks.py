"""Celery adapters for datasets: process a large upload, purge deleted datasets, expire uploads."""

from __future__ import annotations

from celery import shared_task

from apps.tenancy.scope import tenant_scope


@shared_task(name="datasets.process_version", acks_late=True, reject_on_worker_lost=True, max_retries=0)
def process_version(tenant_id: int, version_id: int, session_id: int, expected_sha256: str | None) -> str:
    """Validate, scan, convert and encrypt one uploaded version. Idempotent: a redelivered message
    finds the version no longer ``processing`` and does nothing."""
    from apps.datasets.services import process_version_async

    with tenant_scope(tenant_id):
        process_version_async(tenant_id, version_id, session_id, expected_sha256)
    return "done"


@shared_task(name="datasets.deidentify_version", acks_late=True, reject_on_worker_lost=True, max_retries=0)
def deidentify_version(tenant_id: int, version_id: int) -> str:
    """Apply a version's policy to its source (large datasets). Idempotent like process_version."""
    from apps.datasets.services import run_deidentify_async

    with tenant_scope(tenant_id):
        run_deidentify_async(version_id)
    return "done"


@shared_task(name="datasets.purge_expired", acks_late=True, reject_on_worker_lost=True)
def purge_expired_task() -> int:
    """Purge the stored data of datasets deleted longer ago than the retention period."""
    from apps.datasets.services import expire_uploads, purge_expired

    expire_uploads()
    return purge_expired()
