"""Publishes a federation's events to its channel group, after they are committed."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from apps.common.publisher import publish
from apps.federation.models import FederationEvent

logger = logging.getLogger(__name__)


def federation_group(tenant_id: int, federation_id: int) -> str:
    return f"t{int(tenant_id)}.fed{int(federation_id)}"


def event_dict(e: FederationEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "kind": e.kind,
        "round": e.round_number,
        "site": e.site_id,
        "data": e.data,
        "created_at": e.created_at.isoformat(),
    }


# The keys of a site event anyone who sees the event may read (its state, not its figures).
PUBLIC_SITE_EVENT_KEYS = ("state", "reason", "wait_reason", "approval", "attempt", "error")


def filter_event(event: dict[str, Any], visible: Collection[int]) -> dict[str, Any]:
    """A site event's metrics and counts only for a caller who may see that site's (``visible``):
    the REST events view and the websocket stream both answer through this."""
    if event.get("site") is not None and event["site"] not in visible:
        event = {**event, "data": {k: v for k, v in event["data"].items() if k in PUBLIC_SITE_EVENT_KEYS}}
        if isinstance(event["data"].get("error"), dict):  # code and message only: details may hold figures
            err = event["data"]["error"]
            event["data"]["error"] = {"code": err.get("code"), "message": err.get("message")}
    return event


def publish_federation_event(event: FederationEvent) -> None:
    """Hand the committed event to the process's sender thread (``apps.common.publisher``: in
    order, without blocking the site task or request; best effort, clients resync by seq)."""
    publish(
        federation_group(event.tenant_id, event.federation_id),
        {"type": "federation.event", "event": event_dict(event)},
    )
