"""Publishes audit summaries to a tenant's live channel group (no details, no PHI)."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


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
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        group = audit_group(tenant_id)
        async_to_sync(layer.group_send)(group, {"type": "audit.event", "event": event, "group": group})
    except Exception:  # live view is best effort; the event itself is already committed
        logger.warning("could not publish audit event to the live channel", exc_info=True)


def publish_tenant_control(tenant_id: int, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    group = control_group(tenant_id)
    async_to_sync(layer.group_send)(group, {"type": "tenant.control", **message, "group": group})
