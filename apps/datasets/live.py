"""Tells a grantee's live streams that its access to a dataset ended (after commit).

Streams about work on a dataset (the job stream) join ``dataset_group(tenant, dataset)`` of their
tenant; a revoked grant (or a deleted dataset) sends ``dataset.access_changed`` to the grantee's
group, and each stream checks the gate again and closes (4403) when the dataset is no longer usable.
Running training checks the same gate itself between steps.

The owner's own streams about the dataset (``tenants/<slug>/datasets/<id>``) listen on the owner's
group of the same name: its ``dataset.event`` messages (``services.events``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apps.common.publisher import publish

if TYPE_CHECKING:
    from apps.datasets.models import DatasetEvent


def dataset_group(tenant_id: int, dataset_id: int) -> str:
    return f"t{int(tenant_id)}.dataset{int(dataset_id)}"


def publish_dataset_event(event: DatasetEvent) -> None:
    """The owner's dataset stream: hand the committed event to the process's sender thread."""
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
    """Tell ``tenant_id``'s streams about ``dataset_id`` to check their access again (the gate
    refuses at once anyway; this closes the sockets)."""
    publish(
        dataset_group(tenant_id, dataset_id),
        {"type": "dataset.access_changed", "dataset_id": dataset_id, "grant_id": grant_id, "event": event},
    )
