"""Training jobs: create (spec validated, dataset access checked), cancel, and run — the body of
the Celery task, a thin adapter onto ``workers.training``:

* **Claim** by a conditional update (queued, or running with an expired lease after a worker died),
  so a duplicate delivery is a no-op and a redelivery after kill -9 resumes.
* **Gate**: the dataset must be the tenant's own de-identified version or one it holds a live
  ``process`` grant on, checked at start and then every ``STOP_CHECK_SECONDS`` from the training
  loop (cancellation and grant revocation stop the run at the next optimizer step after that).
* **Data** is decrypted in memory from the encrypted version (never written in plaintext).
* **Checkpoints** are encrypted, atomic and checksummed (``workers.training.checkpoint``), under a
  data key fixed for the job's life; a redelivered task resumes from the newest valid one.
* **Errors** that cannot succeed on retry (bad spec, bad data, out of memory) fail the job at once
  with an envelope (type, message, last log lines); others re-raise so the broker redelivers, up to
  ``max_restarts``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import multiprocessing
import os
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.audit.services import audit_record, audited_change
from apps.common.errors import Conflict
from apps.datasets import selectors as dataset_selectors
from apps.datasets.models import DatasetVersion
from apps.datasets.services import VERSION_KIND
from apps.datasets.storage import EncryptedUpload, open_decrypted
from apps.tenancy.models import Tenant
from apps.tenancy.scope import tenant_scope
from apps.training.models import JobEvent, ModelVersion, TrainingJob
from apps.training.scheduler import record_usage, schedule
from apps.vault import services as vault
from apps.vault.models import DataKey
from workers.training.spec import SpecError, TrainSpec

logger = logging.getLogger(__name__)

STOP_CHECK_SECONDS = 0.2
METRICS_MIN_INTERVAL = 0.1  # at most 10 metric events per second per job (coalesced)
NOT_RETRIED = ("SpecError", "DataError", "OutOfMemoryError", "ValueError", "KeyError", "TypeError")


class JobAccessLost(Exception):
    """The job's dataset is no longer usable by its tenant (grant revoked or expired, deleted)."""


# --- create / cancel ----------------------------------------------------------------------------


def _spec_or_400(spec: dict[str, Any]) -> TrainSpec:
    from rest_framework.exceptions import ValidationError

    try:
        parsed = TrainSpec.from_dict(spec)
        parsed.validate()
    except SpecError as exc:
        raise ValidationError({f"spec.{k}": v for k, v in exc.fields.items()} or {"spec": [str(exc)]}) from exc
    return parsed


def usable_version(*, tenant: Tenant, version_id: int) -> DatasetVersion | None:
    """A ready de-identified version the tenant owns or holds a live ``process`` grant on."""
    version = (
        DatasetVersion.all_tenants.filter(
            pk=version_id, kind=DatasetVersion.Kind.DEIDENTIFIED, status=DatasetVersion.Status.READY
        )
        .select_related("dataset")
        .first()
    )
    if version is None:
        return None
    if not dataset_selectors.dataset_access(consumer=tenant, dataset_id=version.dataset_id, permission="process"):
        return None
    return version


def job_create(
    *, tenant: Tenant, created_by: Any, name: str, dataset_version_id: int, spec: dict[str, Any], priority: int = 0
) -> TrainingJob:
    from apps.common.errors import AccessDenied

    parsed = _spec_or_400(spec)
    version = usable_version(tenant=tenant, version_id=dataset_version_id)
    if version is None:
        raise AccessDenied(
            reason="dataset_not_usable",
            tenant_id=tenant.pk,
            target_type="datasets.datasetversion",
            target_id=dataset_version_id,
        )
    queue = "gpu" if parsed.device == "cuda" else "cpu"
    with audited_change():
        job = TrainingJob.objects.create(
            tenant=tenant,
            name=name,
            dataset_version=version,
            spec=parsed.to_dict(),
            spec_hash=parsed.spec_hash(),
            queue=queue,
            priority=priority,
            max_restarts=settings.COHORT_JOB_MAX_RESTARTS,
            created_by=created_by if getattr(created_by, "key_id", None) is None else None,
            slots=parsed.world_size * parsed.nnodes,
            nodes=parsed.nnodes,
        )
        # Admission now, in this transaction: the response already says whether the job was
        # admitted or why it waits (its admission is recorded in job.created, not as a second
        # event); an admitted job's task is sent after commit.
        schedule(fold=job.pk)
        job.refresh_from_db()
        audit_record(
            action="job.created",
            tenant=tenant,
            target=job,
            details={
                "dataset_version_id": version.pk,
                "model": parsed.model.name,
                "queue": queue,
                "admitted": job.admitted_at is not None,
                "wait_reason": job.wait_reason,
            },
        )
    return job


def job_cancel(*, tenant: Tenant, job: TrainingJob) -> TrainingJob:
    """Cooperative: a queued job is cancelled at once; a running one stops at its next check."""
    if job.status in TrainingJob.TERMINAL:
        raise Conflict(f"This job is already {job.status}.")
    with audited_change():
        if job.status == TrainingJob.Status.QUEUED:
            TrainingJob.objects.filter(pk=job.pk).update(
                status=TrainingJob.Status.CANCELLED,
                status_reason="cancelled before it started",
                cancel_requested=True,
                finished_at=timezone.now(),
            )
        else:
            TrainingJob.objects.filter(pk=job.pk).update(cancel_requested=True)
        audit_record(action="job.cancel_requested", tenant=tenant, target=job, details={"was": job.status})
    job.refresh_from_db()
    if job.status == TrainingJob.Status.CANCELLED:
        schedule()  # its slot (if it was admitted) goes to the next job
    return job


# --- events ----------------------------------------------------------------------------------------


def _event(
    job_id: int,
    tenant_id: int,
    kind: str,
    payload: dict[str, Any],
    step: int = 0,
    epoch: int = 0,
    *,
    progress: dict[str, Any] | None = None,
) -> int:
    """Append one event with the next sequence number of the job (atomic counter on the job row).
    Its own short transaction: a running job's progress is visible at once."""
    with tenant_scope(tenant_id):
        updated = TrainingJob.objects.filter(pk=job_id).select_for_update().values_list("event_seq", flat=True).first()
        seq = int(updated or 0) + 1
        extra = {"progress": progress} if progress is not None else {}
        TrainingJob.objects.filter(pk=job_id).update(event_seq=seq, **extra)
        event = JobEvent.objects.create(
            tenant_id=tenant_id, job_id=job_id, seq=seq, kind=kind, step=step, epoch=epoch, payload=payload
        )
        from apps.training.live import publish_job_event

        transaction.on_commit(lambda: publish_job_event(event))
    return seq


class DjangoSink:
    """The engine's progress sink: persists metrics (throttled), logs, and checkpoints."""

    def __init__(self, job: TrainingJob, checkpoint_dir: Path, key: bytes, context: bytes) -> None:
        self.job = job
        self.dir = checkpoint_dir
        self.key, self.context = key, context
        self._last_metrics = 0.0
        self._pending: tuple[int, int, dict[str, float]] | None = None
        self.log_tail: deque[str] = deque(maxlen=20)
        self.lease: Lease | None = None

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self._last_metrics < METRICS_MIN_INTERVAL:
            self._pending = (step, epoch, values)  # coalesced: the newest wins
            return
        self._flush_metrics(step, epoch, values)

    def _flush_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        self._last_metrics = time.monotonic()
        self._pending = None
        clean = {k: float(v) for k, v in values.items() if v == v}  # drop NaN
        _event(
            self.job.pk,
            self.job.tenant_id,
            JobEvent.Kind.METRICS,
            clean,
            step=step,
            epoch=epoch,
            progress={"step": step, "epoch": epoch, **clean},
        )

    def flush(self) -> None:
        if self._pending is not None:
            self._flush_metrics(*self._pending)

    def on_log(self, line: str) -> None:
        self.log_tail.append(line[:500])
        _event(self.job.pk, self.job.tenant_id, JobEvent.Kind.LOG, {"line": line[:500]})

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.flush()

    def on_checkpoint(self, state: Any) -> None:
        from workers.training.checkpoint import save_checkpoint

        if self.lease is not None and not self.lease.renew(force=True):
            raise LeaseLost("another worker holds this job's lease: not writing a checkpoint")
        save_checkpoint(state.to_dict(), self.dir, key=self.key, context=self.context, step=state.step)


class LeaseLost(Exception):
    """This worker's lease expired and another worker claimed the job: stop without writing."""


class Lease:
    """The worker's hold on a running job: renewed (throttled) while it trains, fenced by the owner
    token so a worker that lost its lease notices instead of racing the new owner. Each renewal
    also adds the slot-seconds used since the last one to the tenant's usage ledger, so the time
    of a worker that is killed is counted up to its last renewal."""

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        self.seconds = settings.COHORT_JOB_LEASE_SECONDS
        self.every = max(0.5, min(self.seconds / 4.0, 15.0))
        self._last = time.monotonic()
        self._usage_mark = time.monotonic()

    def renew(self, *, force: bool = False) -> bool:
        """Extend the lease; False when it is no longer ours."""
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return True
        self._last = now
        with tenant_scope(self.job.tenant_id):
            held = TrainingJob.objects.filter(
                pk=self.job.pk, lease_owner=self.job.lease_owner, status=TrainingJob.Status.RUNNING
            ).update(lease_until=timezone.now() + timedelta(seconds=self.seconds))
        self.account()
        return bool(held)

    def account(self) -> None:
        now = time.monotonic()
        elapsed, self._usage_mark = now - self._usage_mark, now
        record_usage(self.job.tenant_id, self.job.queue, elapsed * self.job.slots)


# --- run -------------------------------------------------------------------------------------------


def claim(tenant_id: int, job_id: int) -> TrainingJob | None:
    """Take the job for this worker: queued, or running with an expired lease (its worker died).
    Returns None for a duplicate delivery or a finished job."""
    now = timezone.now()
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with tenant_scope(tenant_id), audited_change():
        n = TrainingJob.objects.filter(
            Q(status=TrainingJob.Status.QUEUED)
            | Q(status=TrainingJob.Status.RUNNING, lease_until__lt=now)
            | Q(status=TrainingJob.Status.RUNNING, lease_until__isnull=True),
            pk=job_id,
            cancel_requested=False,
            admitted_at__isnull=False,  # only the scheduler starts jobs: a stray message cannot
        ).update(
            status=TrainingJob.Status.RUNNING,
            attempts=F("attempts") + 1,
            lease_owner=owner,
            lease_until=now + timedelta(seconds=settings.COHORT_JOB_LEASE_SECONDS),
            started_at=now,
        )
        job = TrainingJob.objects.select_related("tenant").filter(pk=job_id).first()
        if not n or job is None:
            audit_record(action="job.delivery_ignored", tenant=tenant_id, details={"job": job_id})
            return None
        audit_record(action="job.started", tenant=job.tenant_id, target=job, details={"attempt": job.attempts})
    return job


def _finish(
    job: TrainingJob,
    status: str,
    reason: str,
    *,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    lease: Lease | None = None,
) -> bool:
    """Finish the job if this worker still holds it (fenced by the lease owner); then let the
    scheduler hand its slot on. False when another worker took the job over meanwhile."""
    with tenant_scope(job.tenant_id), audited_change():
        done = TrainingJob.objects.filter(
            pk=job.pk, lease_owner=job.lease_owner, status=TrainingJob.Status.RUNNING
        ).update(
            status=status,
            status_reason=reason[:300],
            result=result or {},
            error=error or {},
            finished_at=timezone.now(),
            lease_until=None,
        )
        audit_record(
            action=f"job.{status}" if done else "job.finish_superseded",
            tenant=job.tenant_id,
            target=job,
            details={"reason": reason[:200]},
        )
    if lease is not None:
        lease.account()
    if done:
        _event(job.pk, job.tenant_id, JobEvent.Kind.STATE, {"status": status, "reason": reason[:300]})
    schedule()
    return bool(done)


def _load_data(job: TrainingJob, version: DatasetVersion, spec: TrainSpec) -> Any:
    from workers.schema import DatasetSchema
    from workers.training.data import prepare, prepare_images

    with tenant_scope(job.tenant_id):
        key = dataset_selectors.version_key(consumer=job.tenant, version=version)
    reader = open_decrypted(version.tenant_id, VERSION_KIND, version.pk, version.storage_name, key)
    with reader:
        if version.format == "zip":
            return prepare_images(io.BytesIO(reader.read()), spec)
        table = pq.read_table(pa.PythonFile(reader, mode="r"), pre_buffer=False)
    return prepare(table, DatasetSchema.from_dict(version.schema), spec)


def _usable(job: TrainingJob) -> DatasetVersion | None:
    with tenant_scope(job.tenant_id):
        return usable_version(tenant=job.tenant, version_id=job.dataset_version_id)


def run_job(tenant_id: int, job_id: int) -> str:
    """The task body. Not one transaction: every database step is its own short tenant-scoped
    transaction, so progress, leases and cancellation are visible while the job runs.
    Returns the job's final status or why nothing ran."""
    from workers.training.checkpoint import load_latest
    from workers.training.engine import TrainState, train

    job = claim(tenant_id, job_id)
    if job is None:
        return "ignored"
    lease = Lease(job)
    if job.attempts > job.max_restarts + 1:
        _finish(
            job, TrainingJob.Status.FAILED, f"gave up after {job.attempts - 1} attempts (max_restarts)", lease=lease
        )
        return TrainingJob.Status.FAILED
    spec = TrainSpec.from_dict(job.spec)
    version = _usable(job)
    if version is None:
        _finish(
            job,
            TrainingJob.Status.FAILED,
            "dataset not usable: grant revoked or expired, or dataset deleted",
            lease=lease,
        )
        return TrainingJob.Status.FAILED
    with tenant_scope(job.tenant_id):
        if job.checkpoint_key_id is None:
            key_obj = vault.active_key(job.tenant_id, DataKey.Purpose.DATA)
            TrainingJob.objects.filter(pk=job.pk).update(checkpoint_key=key_obj)
        else:
            key_obj = DataKey.objects.get(pk=job.checkpoint_key_id)
    ckpt_dir = Path(settings.COHORT_CHECKPOINT_DIR) / f"t{job.tenant_id}" / f"job{job.pk}"
    context = f"cohort/checkpoint/{job.tenant_id}/{job.pk}".encode()
    sink = DjangoSink(job, ckpt_dir, vault.material(key_obj), context)
    sink.lease = lease
    last_check = [0.0]
    stop_reason: list[str] = []

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last_check[0] < STOP_CHECK_SECONDS:
            return False
        last_check[0] = now
        with tenant_scope(job.tenant_id):
            cancelled = TrainingJob.objects.filter(pk=job.pk, cancel_requested=True).exists()
        if cancelled:
            stop_reason.append("cancelled")
            return True
        if _usable(job) is None:
            stop_reason.append("grant_revoked")
            return True
        if not lease.renew():
            stop_reason.append("lease_lost")
            return True
        return False

    try:
        prepared = _load_data(job, version, spec)
        if not lease.renew(force=True):
            raise LeaseLost("the lease expired while the data was loading")
        resume = None
        found = load_latest(
            ckpt_dir,
            key=sink.key,
            context=context,
            on_corrupt=lambda p, r: sink.on_log(f"skipped corrupt checkpoint {p.name}: {r}"),
        )
        if found is not None:
            resume = TrainState.from_dict(found[0])
            sink.on_log(f"resuming from checkpoint at step {found[1].step} (attempt {job.attempts})")
        if spec.nnodes > 1:
            result = _lead_nodes(job, spec, prepared, sink, resume, should_stop)
        elif spec.world_size > 1:
            result = _train_distributed(job, spec, prepared, sink, resume, should_stop)
        else:
            result = train(spec, prepared, sink, resume=resume, should_stop=should_stop)
        sink.flush()
    except LeaseLost as exc:
        lease.account()
        logger.warning("job %s: %s; the new owner carries on", job.pk, exc)
        return "superseded"
    except Exception as exc:
        kind = type(exc).__name__
        if kind in NOT_RETRIED or job.attempts > job.max_restarts:
            _finish(
                job,
                TrainingJob.Status.FAILED,
                f"{kind}: {str(exc)[:200]}",
                error={"type": kind, "message": str(exc)[:500], "last_log_lines": list(sink.log_tail)},
                lease=lease,
            )
            return TrainingJob.Status.FAILED
        lease.account()
        raise  # transient: the broker redelivers (acks_late), the next attempt resumes
    if result.status == "stopped":
        if not stop_reason:  # another node asked the group to stop (it saw the cancel first)
            last_check[0] = 0.0
            should_stop()
        reason = stop_reason[0] if stop_reason else "stopped"
        if reason == "lease_lost":
            lease.account()
            return "superseded"
        status = TrainingJob.Status.CANCELLED if reason == "cancelled" else TrainingJob.Status.FAILED
        _finish(job, status, reason, result={"steps": result.steps, "epochs": result.epochs}, lease=lease)
        return status
    if not lease.renew(force=True):
        lease.account()
        return "superseded"
    model = _register_model(job, spec, prepared, result, version)
    _finish(
        job,
        TrainingJob.Status.SUCCEEDED,
        result.status,
        result={
            "final_metrics": result.final_metrics,
            "best_metrics": result.best_metrics,
            "steps": result.steps,
            "epochs": result.epochs,
            "samples_per_second": result.samples_per_second,
            "device": result.device,
            "model_version_id": model.pk,
        },
        lease=lease,
    )
    return TrainingJob.Status.SUCCEEDED


def code_version() -> str:
    """The platform's code version: ``COHORT_CODE_VERSION`` (set by the image build), else the git
    commit of the checkout, else the package version."""
    return _code_version()


@functools.cache
def _code_version() -> str:
    if settings.COHORT_CODE_VERSION:
        return str(settings.COHORT_CODE_VERSION)
    git = Path(settings.BASE_DIR) / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            if ref_file.exists():
                return "git:" + ref_file.read_text().strip()
            for line in (git / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return "git:" + line.split(" ", 1)[0]
        elif len(head) == 40:
            return "git:" + head
    except OSError:
        pass
    return "cohort " + str(settings.SPECTACULAR_SETTINGS.get("VERSION", "unknown"))


def torch_version() -> str:
    import torch

    return str(torch.__version__)


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Let this process start rank processes for the duration of a run.

    A Celery prefork pool child is marked daemonic, and multiprocessing refuses to let a daemonic
    process start children; the ranks are this task's own workers and end with it (a rank whose
    parent dies loses its sink pipe and fails the group), so the flag is lifted for the run. The
    child's authkey is billiard's own string type, which the standard library refuses to pickle for
    a child, so it is re-set (same bytes) as the standard type."""
    me = multiprocessing.current_process()
    config = me._config  # type: ignore[attr-defined]
    was_daemon, was_authkey = config.get("daemon"), config.get("authkey")
    config["daemon"] = False
    config["authkey"] = multiprocessing.process.AuthenticationString(bytes(me.authkey))  # type: ignore[attr-defined]
    try:
        yield
    finally:
        config["daemon"], config["authkey"] = was_daemon, was_authkey


def _train_distributed(
    job: TrainingJob,
    spec: TrainSpec,
    prepared: Any,
    sink: DjangoSink | None,
    resume: Any,
    should_stop: Any,
    *,
    node_rank: int = 0,
    master: tuple[str, int] | None = None,
) -> Any:
    """``spec.world_size`` data-parallel processes on this worker, as node ``node_rank`` of
    ``spec.nnodes``. The prepared tensors reach the ranks encrypted under a one-time key
    (``workers.training.handoff``) in a private folder removed afterwards; on node 0 rank 0's
    progress comes back to this process's sink (database, checkpoints). ``should_stop`` runs here,
    so cancellation, revocation and lease checks work as for one process."""
    import shutil

    from workers.training.distributed import run_ddp, run_node
    from workers.training.handoff import save_prepared

    scratch = Path(settings.COHORT_TMP_DIR) / f"job{job.pk}-n{node_rank}-{uuid.uuid4().hex[:8]}"
    try:
        with _children_allowed():
            factory = save_prepared(prepared, scratch)
            if spec.nnodes == 1:
                if sink is not None:
                    sink.on_log(f"data-parallel: {spec.world_size} processes on {socket.gethostname()}")
                return run_ddp(spec, factory, spec.world_size, sink=sink, resume=resume, should_stop=should_stop)
            assert master is not None
            return run_node(
                spec,
                factory,
                node_rank=node_rank,
                nnodes=spec.nnodes,
                nproc_per_node=spec.world_size,
                master_addr=master[0],
                master_port=master[1],
                sink=sink,
                resume=resume,
                should_stop=should_stop,
                timeout_s=settings.COHORT_RENDEZVOUS_TIMEOUT,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _lead_nodes(
    job: TrainingJob, spec: TrainSpec, prepared: Any, sink: DjangoSink, resume: Any, should_stop: Any
) -> Any:
    """Node 0 of a multi-node run: pick the rendezvous address, publish it on the job (for this
    attempt only), then host the c10d store and train; the other nodes' tasks find it there."""
    addr = settings.COHORT_RENDEZVOUS_HOST
    port = _free_port(addr)
    with tenant_scope(job.tenant_id):
        held = TrainingJob.objects.filter(pk=job.pk, lease_owner=job.lease_owner).update(
            rendezvous={"addr": addr, "port": port, "attempt": job.attempts}
        )
    if not held:
        raise LeaseLost("the lease was lost before the rendezvous was published")
    sink.on_log(f"multi-node: {spec.nnodes} nodes × {spec.world_size} processes; rendezvous {addr}:{port}")
    return _train_distributed(job, spec, prepared, sink, resume, should_stop, node_rank=0, master=(addr, port))


def run_node_task(tenant_id: int, job_id: int, node_rank: int) -> str:
    """The task body of node ``node_rank`` >= 1 of a multi-node job: wait for node 0's rendezvous of
    the job's current attempt, load the same data and checkpoint, and train as that node. It holds
    no lease and writes nothing but log lines: node 0 owns the job; if this node dies, node 0's run
    fails and the job's next attempt (after its lease) sends every node again. A delivery for a
    finished job or a past attempt does nothing."""
    from workers.training.checkpoint import load_latest
    from workers.training.engine import TrainState

    deadline = time.monotonic() + settings.COHORT_RENDEZVOUS_TIMEOUT
    job = None
    while time.monotonic() < deadline:
        with tenant_scope(tenant_id):
            job = TrainingJob.objects.select_related("tenant").filter(pk=job_id).first()
        if job is None or job.status in TrainingJob.TERMINAL:
            return "ignored"
        rv = job.rendezvous or {}
        if job.status == TrainingJob.Status.RUNNING and rv.get("attempt") == job.attempts and rv.get("port"):
            break
        time.sleep(0.5)
    else:
        return "no rendezvous"
    assert job is not None
    attempt, master = job.attempts, (str(job.rendezvous["addr"]), int(job.rendezvous["port"]))
    spec = TrainSpec.from_dict(job.spec)
    if not 1 <= node_rank < spec.nnodes:
        return "ignored"
    version = _usable(job)
    if version is None:
        return "ignored"

    def log(line: str) -> None:
        _event(job.pk, job.tenant_id, JobEvent.Kind.LOG, {"line": f"node {node_rank}: {line}"[:500]})

    last = [0.0]

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last[0] < STOP_CHECK_SECONDS:
            return False
        last[0] = now
        with tenant_scope(tenant_id):
            row = TrainingJob.objects.filter(pk=job_id).values("status", "attempts", "cancel_requested").first()
        return row is None or row["cancel_requested"] or row["attempts"] != attempt or row["status"] != "running"

    try:
        prepared = _load_data(job, version, spec)
        with tenant_scope(tenant_id):
            key = vault.material(DataKey.objects.get(pk=job.checkpoint_key_id)) if job.checkpoint_key_id else None
        resume = None
        if key is not None:
            found = load_latest(
                Path(settings.COHORT_CHECKPOINT_DIR) / f"t{tenant_id}" / f"job{job_id}",
                key=key,
                context=f"cohort/checkpoint/{tenant_id}/{job_id}".encode(),
            )
            resume = TrainState.from_dict(found[0]) if found is not None else None
        log(f"joining rendezvous {master[0]}:{master[1]} (attempt {attempt})")
        _train_distributed(job, spec, prepared, None, resume, should_stop, node_rank=node_rank, master=master)
    except Exception as exc:  # node 0 sees the failure through the process group and decides
        log(f"failed: {type(exc).__name__}: {str(exc)[:200]}")
        return "failed"
    return "done"


def _register_model(
    job: TrainingJob, spec: TrainSpec, prepared: Any, result: Any, version: DatasetVersion
) -> ModelVersion:
    """Weights as safetensors, encrypted in object storage, with spec, metrics and lineage."""
    from workers.training.weights import save_weights

    buf = io.BytesIO()
    sha = save_weights(result.model_state, buf, {"job": str(job.pk), "spec_hash": job.spec_hash})
    data = buf.getvalue()
    with tenant_scope(job.tenant_id), audited_change():
        last = ModelVersion.objects.filter(name=job.name).order_by("-version").values_list("version", flat=True).first()
        model = ModelVersion(
            tenant_id=job.tenant_id,
            name=job.name,
            version=(last or 0) + 1,
            job=job,
            spec=job.spec,
            metrics=result.final_metrics,
            lineage={
                "dataset_version_id": version.pk,
                "dataset_id": version.dataset_id,
                "dataset_owner_tenant_id": version.tenant_id,
                "dataset_content_sha256": version.content_sha256,
                "job_id": job.pk,
                "spec_hash": job.spec_hash,
                "code_version": code_version(),
                "torch_version": torch_version(),
            },
            encoders=getattr(prepared, "encoders", {}) or {},
            input_info={**prepared.input_info, "kind": prepared.kind, "problem": prepared.problem},
            sha256=sha,
            size_bytes=len(data),
            storage_name="",
        )
        up = EncryptedUpload(job.tenant_id, "model_version", f"job{job.pk}", size_hint=len(data))
        up.write(data)
        stored = up.finish()
        model.storage_name, model.data_key = stored.name, stored.key
        model.save()
        audit_record(
            action="model.registered",
            tenant=job.tenant_id,
            target=model,
            details={"job_id": job.pk, "version": model.version, "sha256": sha},
        )
    return model


# --- serving: batch predict and export ------------------------------------------------------------

PREDICT_MAX_ROWS = 256
EXPORT_FORMATS = {"torchscript": "pt", "onnx": "onnx"}


def _weights_bytes(model: ModelVersion) -> bytes:
    with open_decrypted(
        model.tenant_id, "model_version", f"job{model.job_id}", model.storage_name, model.data_key
    ) as r:
        return r.read()


_SERVING_CACHE: OrderedDict[tuple[int, str], Any] = OrderedDict()
SERVING_CACHE_SIZE = 8


def _load_for_serving(model: ModelVersion) -> Any:
    """The model rebuilt for serving, cached per process by (id, weights hash)."""
    from apps.common.errors import RejectedInput

    if model.size_bytes > settings.COHORT_PREDICT_MAX_MODEL_BYTES:
        raise RejectedInput(
            "model_too_large",
            f"Online prediction serves models up to {settings.COHORT_PREDICT_MAX_MODEL_BYTES} bytes; export this one "
            "(TorchScript or ONNX) and run it where the data is.",
            details={"size_bytes": model.size_bytes, "limit": settings.COHORT_PREDICT_MAX_MODEL_BYTES},
        )
    if not model.input_info:
        raise RejectedInput("model_not_servable", "This model version predates serving metadata; retrain it.")
    from workers.training.inference import load_model

    key = (model.pk, model.sha256)
    loaded = _SERVING_CACHE.get(key)
    if loaded is None:
        loaded = load_model(model.spec, model.encoders, model.input_info, _weights_bytes(model))
        _SERVING_CACHE[key] = loaded
        while len(_SERVING_CACHE) > SERVING_CACHE_SIZE:
            _SERVING_CACHE.popitem(last=False)
    _SERVING_CACHE.move_to_end(key)
    return loaded


def model_predict(*, tenant: Tenant, model: ModelVersion, rows: list[Any]) -> list[dict[str, Any]]:
    """Predictions for raw rows, encoded as at training time. Audited (row count, never values)."""
    from rest_framework.exceptions import ValidationError

    from workers.training.data import DataError
    from workers.training.inference import predict

    loaded = _load_for_serving(model)
    try:
        out = predict(loaded, rows)
    except DataError as exc:
        raise ValidationError({"rows": [str(exc)[:300]]}) from exc
    audit_record(action="model.predicted", tenant=tenant, target=model, details={"rows": len(rows)})
    return out


def model_export(*, tenant: Tenant, model: ModelVersion, fmt: str) -> bytes:
    """TorchScript or ONNX bytes; audited with the artifact's hash."""
    import hashlib

    from workers.training.inference import export

    loaded = _load_for_serving(model)
    data = export(loaded, fmt)
    audit_record(
        action="model.exported",
        tenant=tenant,
        target=model,
        details={"format": fmt, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)},
    )
    return data
