"""A dataset's event log for its owner's live stream: the next per-dataset number, in the caller's
transaction, published after commit (``apps.datasets.live``). A summary of what happened; the
reports are read over REST."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Max

from apps.datasets.live import publish_dataset_event
from apps.datasets.models import Dataset, DatasetEvent, DatasetGrant, DatasetVersion


def dataset_event_append(
    *, dataset_id: int, tenant_id: int, kind: str, data: dict[str, Any], version_id: int | None = None
) -> int:
    """Append one event (the caller's transaction, the owner's scope). The dataset's row lock
    orders concurrent writers, so numbers have no gaps and no repeats."""
    with transaction.atomic():
        Dataset.objects.select_for_update().filter(pk=dataset_id).values_list("pk", flat=True).first()
        last = DatasetEvent.objects.filter(dataset_id=dataset_id).aggregate(m=Max("seq"))["m"] or 0
        event = DatasetEvent.objects.create(
            tenant_id=tenant_id, dataset_id=dataset_id, seq=last + 1, kind=kind, version_id=version_id, data=data
        )
        transaction.on_commit(lambda: publish_dataset_event(event))
    return event.seq


def version_event(version: DatasetVersion, **extra: Any) -> int:
    """A version's state as the stream shows it (created, processing, ready, failed)."""
    data: dict[str, Any] = {
        "version": version.pk,
        "number": version.number,
        "kind": version.kind,
        "status": version.status,
        "format": version.format,
        "source_version": version.source_version_id,
    }
    if version.status == DatasetVersion.Status.READY:
        data["rows"] = int(version.rows)
        data["columns"] = len((version.schema or {}).get("columns", []))
        scanned = ((version.pii_report or {}).get("columns") or {}).values()
        data["pii_columns"] = sum(1 for c in scanned if isinstance(c, dict) and c.get("detections"))
    if version.status == DatasetVersion.Status.FAILED and version.error:
        data["error"] = {"code": version.error.get("code"), "message": version.error.get("message")}
    return dataset_event_append(dataset_id=version.dataset_id, tenant_id=version.tenant_id, kind="version",
                                data={**data, **extra}, version_id=version.pk)  # fmt: skip


def grant_event(grant: DatasetGrant, grantee_slug: str | None = None) -> int:
    data = {
        "grant": grant.pk,
        "grantee": grantee_slug,
        "grantee_id": grant.grantee_id,
        "permission": grant.permission,
        "status": grant.status,
        "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
    }
    return dataset_event_append(dataset_id=grant.dataset_id, tenant_id=grant.tenant_id, kind="grant", data=data)
