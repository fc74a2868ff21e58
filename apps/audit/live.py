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


def publish_audit_event(tenant_id: int, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(audit_group(tenant_id), {"type": "audit.event", "event": event})
    except Exception:  # live view is best effort; the event itself is already committed
        logger.warning("could not publish audit event to the live channel", exc_info=True)


def publish_tenant_control(tenant_id: int, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    async_to_sync(layer.group_send)(control_group(tenant_id), {"type": "tenant.control", **message})
