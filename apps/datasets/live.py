"""Tells a grantee's live streams that its access to a dataset ended (after commit).

Streams about work on a dataset (the job stream) join ``dataset_group(tenant, dataset)`` of their
tenant; a revoked grant (or a deleted dataset) sends ``dataset.access_changed`` to the grantee's
group, and each stream checks the gate again and closes (4403) when the dataset is no longer usable.
Running training checks the same gate itself between steps.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


def dataset_group(tenant_id: int, dataset_id: int) -> str:
    return f"t{int(tenant_id)}.dataset{int(dataset_id)}"


def publish_access_changed(tenant_id: int, dataset_id: int, *, grant_id: int, event: str) -> None:
    """Tell ``tenant_id``'s streams about ``dataset_id`` to check their access again."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            dataset_group(tenant_id, dataset_id),
            {"type": "dataset.access_changed", "dataset_id": dataset_id, "grant_id": grant_id, "event": event},
        )
    except Exception:  # the gate refuses at once anyway; only the socket would stay open
        logger.warning("could not publish a dataset access change to the live channel", exc_info=True)
