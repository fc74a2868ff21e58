"""Live job stream: ``/ws/v1/tenants/<slug>/jobs/<id>/?after=N``. Replays the job's persisted
events after sequence number N, then forwards new ones as they are written. Every message carries
the job's own ``seq`` (gap-free per job), so a client that sees a gap (the channel layer drops
messages when a consumer falls behind) resyncs through ``GET …/jobs/<id>/events/?after=``.

The socket closes with 4403 when the user's membership ends or the tenant is suspended (the tenant's
control group), and when the tenant loses the job's dataset (a revoked or expired grant, a deleted
dataset): the stream joins the dataset's group (``apps.datasets.live``), and on a change it checks
the gate again.

Handshake, membership, control-group closes and the replay/dedup by ``seq`` come from
:class:`apps.common.stream.TenantStreamConsumer`."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from apps.common.socket import Event, StreamHandler
from apps.common.stream import CLOSE_FORBIDDEN, TenantStreamConsumer
from apps.datasets.live import dataset_group
from apps.tenancy.models import Tenant
from apps.tenancy.scope import tenant_scope
from apps.training.live import event_dict, job_group
from apps.training.models import JobEvent, TrainingJob
from apps.training.selectors import usable_version

REPLAY_MAX = 1000


def _usable_dataset(tenant_id: int, version_id: int) -> int | None:
    """The dataset of the job's version while the tenant may still use it (owns it or holds a live
    ``process`` grant), else None."""
    with tenant_scope(tenant_id):
        version = usable_version(tenant=Tenant.objects.get(pk=tenant_id), version_id=version_id)
        return None if version is None else int(version.dataset_id)


@database_sync_to_async
def _still_usable(tenant_id: int, job_id: int) -> bool:
    with tenant_scope(tenant_id):
        version_id = TrainingJob.objects.filter(pk=job_id).values_list("dataset_version_id", flat=True).first()
        return version_id is not None and _usable_dataset(tenant_id, version_id) is not None


class JobStreamConsumer(TenantStreamConsumer):
    permission = "job.list"
    replays = True
    message_type = "job.event"
    dataset_id: int | None = None
    job_id = 0

    def parse_route(self, kwargs: dict[str, Any]) -> None:
        self.job_id = int(kwargs["job_id"])

    def authorize_target(self, tenant_id: int) -> bool:
        """Another tenant's job answers like an unknown one. Remembers the job's dataset while the
        tenant may use it (its group carries grant changes)."""
        version_id = TrainingJob.objects.filter(pk=self.job_id).values_list("dataset_version_id", flat=True).first()
        if version_id is None:
            return False
        self.dataset_id = _usable_dataset(tenant_id, version_id)
        return True

    def stream_groups(self, tenant_id: int) -> list[str]:
        groups = [job_group(tenant_id, self.job_id)]
        if self.dataset_id is not None:
            groups.append(dataset_group(tenant_id, self.dataset_id))
        return groups

    def replay(self, tenant_id: int, after: int) -> list[dict[str, Any]]:
        events = JobEvent.objects.filter(job_id=self.job_id, seq__gt=after).order_by("seq")[:REPLAY_MAX]
        return [event_dict(e) for e in events]

    async def job_event(self, message: dict[str, Any]) -> None:
        await self.send_event(message["event"]["seq"], message["event"])

    async def dataset_event(self, message: dict[str, Any]) -> None:
        """The owner's dataset events share the dataset's group (``apps.datasets.live``): not this
        stream's."""

    async def dataset_access_changed(self, message: dict[str, Any]) -> None:
        """A grant on the job's dataset was revoked (or the dataset deleted): close unless the
        tenant may still use it (another live grant)."""
        if self.tenant_id is not None and not await _still_usable(self.tenant_id, self.job_id):
            await self.close(code=CLOSE_FORBIDDEN)


# --- the one endpoint's job stream (apps.common.socket) --------------------------------------------
def _job_event(e: dict[str, Any]) -> Event:
    return Event(seq=int(e["seq"]), type=f"job.{e['kind']}", time=e["created_at"],
                 payload={"step": e.get("step"), "epoch": e.get("epoch"), "data": e.get("payload") or {}})  # fmt: skip


class JobStream(StreamHandler):
    """``tenants/<slug>/jobs/<id>``: the job's persisted events (``job.<kind>``: state, metric,
    log, …). Ends when the tenant loses the job's dataset (a revoked or expired grant, a deleted
    dataset), as the per-job endpoint closes."""

    kind = "jobs"
    permission = "job.list"
    dataset_id: int | None = None

    def authorize(self) -> bool:
        version_id = TrainingJob.objects.filter(pk=self.object_id).values_list("dataset_version_id", flat=True).first()
        if version_id is None:
            return False
        self.version_id = version_id
        self.dataset_id = _usable_dataset(self.tenant_id, version_id)
        return True

    def still_allowed(self) -> bool:
        if not TrainingJob.objects.filter(pk=self.object_id).exists():
            return False
        # A job whose dataset was already out of reach at subscribe has nothing more to lose.
        return self.dataset_id is None or _usable_dataset(self.tenant_id, self.version_id) is not None

    def groups(self) -> list[str]:
        out = [job_group(self.tenant_id, self.object_id)]
        if self.dataset_id is not None:
            out.append(dataset_group(self.tenant_id, self.dataset_id))
        return out

    def between(self, after: int, before: int | None, limit: int) -> list[Event]:
        events = JobEvent.objects.filter(job_id=self.object_id, seq__gt=after)
        if before is not None:
            events = events.filter(seq__lt=before)
        return [_job_event(event_dict(e)) for e in events.order_by("seq")[:limit]]

    def latest(self) -> int:
        return int(TrainingJob.objects.filter(pk=self.object_id).values_list("event_seq", flat=True).first() or 0)

    def from_message(self, message: dict[str, Any]) -> Event | None:
        return _job_event(message["event"]) if message.get("type") == "job.event" else None
