"""Celery adapters for the audit log: signed checkpoints and per-tenant chain verification."""

from __future__ import annotations

from celery import shared_task

from apps.audit.monitoring import verify_all_chains
from apps.audit.services import audit_record
from apps.audit.verification import audit_verify, checkpoint_create
from apps.common.context import Actor
from apps.tenancy.scope import tenant_scope


@shared_task(name="audit.checkpoint_create", acks_late=True, reject_on_worker_lost=True, time_limit=600)
def audit_checkpoint_task() -> dict[str, object]:
    """Sign the head of every chain (platform-level; it reads heads only, never tenant rows).

    Idempotent in effect: a redelivered message just signs a newer checkpoint.
    """
    doc = checkpoint_create()
    audit_record(action="audit.checkpoint_created", actor=Actor.system("celery"), details={"key_id": doc["key_id"]})
    return {"key_id": doc["key_id"]}


@shared_task(name="audit.tenant_verify", acks_late=True, reject_on_worker_lost=True, time_limit=1800)
def audit_tenant_verify_task(*, tenant_id: int) -> dict[str, object]:
    """Verify one tenant's chain and record the outcome in that chain."""
    result = audit_verify(tenant_id=tenant_id)
    with tenant_scope(tenant_id):
        audit_record(
            action="audit.verified",
            tenant=tenant_id,
            actor=Actor.system("celery"),
            outcome="success" if result.ok else "error",
            details={
                "ok": result.ok,
                "num_events": result.num_events,
                "problems": [p.as_dict() for p in result.problems][:10],
            },
        )
    return result.as_dict()


@shared_task(name="audit.verify_all", acks_late=True, reject_on_worker_lost=True, time_limit=6 * 3600)
def audit_verify_all_task() -> dict[str, object]:
    """Verify every chain as the platform (beat: COHORT_AUDIT_VERIFY_SECONDS); a broken chain is a
    platform ``audit.chain_broken`` event and shows on /readyz and the console. Needs no signing key.

    Idempotent in effect: a redelivered message just verifies again."""
    return verify_all_chains()
