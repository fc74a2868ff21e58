"""Tells a grantee's live streams that its access to a dataset ended (after commit).

Streams about work on a dataset (the job stream) join ``dataset_group(tenant, dataset)`` of their
tenant; a revoked grant (or a deleted dataset) sends ``dataset.access_changed`` to the grantee's
group, and each stream checks the gate again and closes (4403) when the dataset is no longer usable.
Running training checks the same gate itself between steps.

The owner's own streams about the dataset (``tenants/<slug>/datasets/<id>``) listen on the owner's
group of the same name: its ``dataset.event`` messages (``services.events``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

if TYPE_CHECKING:
    from apps.datasets.models import DatasetEvent

logger = logging.getLogger(__name__)


def dataset_group(tenant_id: int, dataset_id: int) -> str:
    return f"t{int(tenant_id)}.dataset{int(dataset_id)}"


def publish_dataset_event(event: DatasetEvent) -> None:
    """The owner's dataset stream: hand the committed event to the process's sender thread."""
    from apps.common.publisher import publish

    publish(dataset_group(event.tenant_id, event.dataset_id), {"type": "dataset.event", "event": event_dict(event)})


def event_dict(e: DatasetEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "kind": e.kind,
        "version": e.version_id,
        "data": e.data,
        "created_at": e.created_at.isoformat(),
    }


def publish_access_changed(tenant_id: int, dataset_id: int, *, grant_id: int, event: str) -> None:
    """Tell ``tenant_id``'s streams about ``dataset_id`` to check their access again."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        group = dataset_group(tenant_id, dataset_id)
        async_to_sync(layer.group_send)(
            group,
            {"type": "dataset.access_changed", "dataset_id": dataset_id, "grant_id": grant_id, "event": event,
             "group": group},
        )  # fmt: skip
    except Exception:  # the gate refuses at once anyway; only the socket would stay open
        logger.warning("could not publish a dataset access change to the live channel", exc_info=True)
