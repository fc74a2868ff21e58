"""Data-parallel and multi-node runs: hand the prepared data to the rank processes, publish node
0's rendezvous on the job, and the task body of the further nodes (``training.run_node``).

A worker that trains runs one job per process with no pool parent (``celery worker --pool solo``,
or ``--pool threads`` for a worker that also serves the API side): its rank processes are then
ordinary children, which a prefork pool's daemonic child may not start."""

from __future__ import annotations

import multiprocessing
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings

from apps.common.exceptions import RunFailed
from apps.tenancy.scope import tenant_scope
from apps.training.models import JobEvent, TrainingJob
from apps.training.services.events import append_event
from apps.training.services.inputs import STOP_CHECK_SECONDS, checkpoint_location, load_data, usable
from apps.training.services.lease import LeaseLost
from apps.vault import services as vault
from apps.vault.models import DataKey
from workers.training.spec import TrainSpec


def train_distributed(
    job: TrainingJob,
    spec: TrainSpec,
    prepared: Any,
    sink: Any,
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
    from workers.training.distributed import run_ddp, run_node
    from workers.training.handoff import save_prepared

    if multiprocessing.current_process().daemon:
        raise RunFailed(
            "Data-parallel training needs a worker whose task process may start children: run the "
            "training queues with `celery worker --pool solo` (or `--pool threads`), not a prefork pool."
        )
    scratch = Path(settings.COHORT_TMP_DIR) / f"job{job.pk}-n{node_rank}-{uuid.uuid4().hex[:8]}"
    try:
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


def lead_nodes(job: TrainingJob, spec: TrainSpec, prepared: Any, sink: Any, resume: Any, should_stop: Any) -> Any:
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
    return train_distributed(job, spec, prepared, sink, resume, should_stop, node_rank=0, master=(addr, port))


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
    version = usable(job)
    if version is None:
        return "ignored"

    def log(line: str) -> None:
        append_event(job.pk, job.tenant_id, JobEvent.Kind.LOG, {"line": f"node {node_rank}: {line}"[:500]})

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
        prepared = load_data(job, version, spec)
        with tenant_scope(tenant_id):
            key = vault.material(DataKey.objects.get(pk=job.checkpoint_key_id)) if job.checkpoint_key_id else None
        resume = None
        if key is not None:
            folder, context = checkpoint_location(tenant_id, job_id)
            found = load_latest(folder, key=key, context=context)
            resume = TrainState.from_dict(found[0]) if found is not None else None
        log(f"joining rendezvous {master[0]}:{master[1]} (attempt {attempt})")
        train_distributed(job, spec, prepared, None, resume, should_stop, node_rank=node_rank, master=master)
    except Exception as exc:  # node 0 sees the failure through the process group and decides
        log(f"failed: {type(exc).__name__}: {str(exc)[:200]}")
        return "failed"
    return "done"
