"""Publishes audit summaries to a tenant's live channel group (no details, no PHI)."""

from __future__ import annotations

from typing import Any

from apps.common.publisher import publish


def audit_group(tenant_id: int) -> str:
    return f"t{int(tenant_id)}.audit"


def control_group(tenant_id: int) -> str:
    return f"t{int(tenant_id)}.control"


def _listeners_key(tenant_id: int) -> str:
    return f"cohort:live:listeners:t{int(tenant_id)}"


def listeners_changed(tenant_id: int, delta: int) -> None:
    """Count the tenant's open live-audit sockets (consumers call this on connect/disconnect)."""
    from apps.common.ratelimit import redis_client

    client = redis_client()
    pipe = client.pipeline()
    pipe.incrby(_listeners_key(tenant_id), delta)
    pipe.expire(_listeners_key(tenant_id), 24 * 3600)  # a crashed server's count ages out
    pipe.execute()


def has_listeners(tenant_id: int) -> bool:
    """True when someone may be listening. Publishing to an empty group costs a thread hop and
    several Redis round trips per audited request, so writers skip it; on any doubt, publish."""
    from apps.common.ratelimit import redis_client

    try:
        value = redis_client().get(_listeners_key(tenant_id))
    except Exception:
        return True
    return value is not None and int(value) > 0


def publish_audit_event(tenant_id: int, event: dict[str, Any]) -> None:
    """The committed event's summary to the tenant's audit group, through the process's sender
    thread (best effort: the live view resyncs from the log)."""
    publish(audit_group(tenant_id), {"type": "audit.event", "event": event})


def publish_tenant_control(tenant_id: int, message: dict[str, Any]) -> None:
    """Tell the tenant's sockets to check their principal again (a revoked session, key or
    membership closes them); in order with the tenant's other live events."""
    publish(control_group(tenant_id), {"type": "tenant.control", **message})
