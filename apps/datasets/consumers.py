"""The owner's live dataset stream on the one websocket endpoint (``apps.common.socket``):
``tenants/<slug>/datasets/<id>`` sends ``dataset.version`` (uploaded, processing, ready with rows,
columns and the number of columns where PII was found, failed with its error), ``dataset.grant``
(given, revoked) and ``dataset.dataset`` (deleted) as they are committed (``services.events``).
Only the owner's members see it: a grantee's subscription answers like a missing dataset."""

from __future__ import annotations

from typing import Any

from django.db.models import Max

from apps.common.socket import Event, StreamHandler
from apps.datasets.live import dataset_group, event_dict
from apps.datasets.models import Dataset, DatasetEvent


def _dataset_event(e: dict[str, Any]) -> Event:
    return Event(seq=int(e["seq"]), type=f"dataset.{e['kind']}", time=e["created_at"],
                 payload={"version": e.get("version"), "data": e.get("data") or {}})  # fmt: skip


class DatasetStream(StreamHandler):
    kind = "datasets"
    permission = "dataset.list"

    def authorize(self) -> bool:
        # As REST: a deleted dataset is gone at once (its stream ends at the next look).
        active = Dataset.objects.filter(pk=self.object_id, tenant_id=self.tenant_id, status=Dataset.Status.ACTIVE)
        return active.exists()

    def groups(self) -> list[str]:
        return [dataset_group(self.tenant_id, self.object_id)]

    def between(self, after: int, before: int | None, limit: int) -> list[Event]:
        events = DatasetEvent.objects.filter(dataset_id=self.object_id, seq__gt=after)
        if before is not None:
            events = events.filter(seq__lt=before)
        return [_dataset_event(event_dict(e)) for e in events.order_by("seq")[:limit]]

    def latest(self) -> int:
        return int(DatasetEvent.objects.filter(dataset_id=self.object_id).aggregate(m=Max("seq"))["m"] or 0)

    def from_message(self, message: dict[str, Any]) -> Event | None:
        return _dataset_event(message["event"]) if message.get("type") == "dataset.event" else None
