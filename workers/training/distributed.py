"""Data-parallel training with ``torch.distributed``: one model replica per process, on one or more nodes.

Entry points: :func:`run_node` (one call per node; in the platform one Celery task per node) and
:func:`run_ddp` (the single-node special case). Each call starts ``nproc_per_node`` local processes
with global ranks ``node_rank * nproc_per_node + local_rank`` and waits for them.

Why this shape:

* Every rank runs the same engine loop (:func:`workers.training.engine._train`) on the same
  prepared data. Each epoch's permutation is a pure function of (seed, epoch), so ranks agree on
  it without communication; each global micro-batch of ``spec.batch_size`` samples is sharded
  ``batch[rank::world_size]`` (what ``DistributedSampler`` does, applied per batch), so the
  *global* batch, and therefore the maths, is the single-process run's.
* The loss is summed over a rank's samples and divided by the global count times ``world_size``;
  DDP averages gradients over ranks, so the gradient is the global-batch mean even for a short
  last batch. Results equal the single-process run up to float summation order (all-reduce adds
  the shards' partial sums): on a small fp32 MLP with SGD the weights agree to < 1e-5 (tested).
* Each process builds its own :class:`Prepared` through ``prepared_factory`` (a picklable
  callable, e.g. ``functools.partial(prepare_tabular, table, schema, spec)``), so tensors are
  never shipped between processes.
* Global rank 0 alone reports and returns the result (written to a private temporary file with
  ``torch.save`` and read back with ``weights_only=True``).

Rendezvous (c10d ``TCPStore``). Node 0's launcher (the process calling :func:`run_node`, not a
rank) hosts the store for the whole run, listening on ``master_addr:master_port`` only (c10d alone
would listen on every interface; :func:`run_ddp` uses 127.0.0.1). Every launcher first registers
its ``node_rank`` there and checks that all nodes agree on the topology, spec hash, backend,
resume step and stop-check period (a mismatch fails every node at once), then starts its ranks,
which join the process group through the same store. A node whose peers (or master) do not
arrive within ``timeout_s`` raises :class:`RendezvousTimeout` before starting any process;
nothing is retried after the deadline. Later, a rank that dies fails its peers at once (gloo:
"Connection closed by peer"; tested); a peer machine that hangs or vanishes is noticed only after
``collective_timeout_s``.

Cooperative stop. The caller's ``should_stop`` typically reads a database, so it runs only in the
launcher (the caller's process, main thread), never in a rank: the launcher calls it every
``stop_poll_s`` seconds and right after each checkpoint the sink has saved, and sets a
per-node ``multiprocessing.Event``. Every rank, before every ``stop_check_every_steps``-th
optimizer step, all-reduces (max) a one-element flag built from its node's event, so all ranks
stop before the same step; global rank 0 then emits a checkpoint and the run returns with status
``"stopped"``. Latency: at most ``stop_poll_s`` until the launcher sees the request, then at most
``stop_check_every_steps`` optimizer steps (one with the default) until every rank has stopped.
Any node's ``should_stop`` can stop the run; normally only node 0's looks.

Progress and checkpoints. Pass ``sink`` (a :class:`ProgressSink` living in the caller's process,
as for :func:`~workers.training.engine.train`): global rank 0 relays its calls over a pipe, and the
launcher calls the sink in its main thread, in order. Metrics and logs are fire-and-forget;
``on_checkpoint`` is synchronous as in the single-process loop: rank 0 waits until the launcher's
sink has returned (e.g. saved the encrypted checkpoint), so checkpoints are never produced faster
than they are saved and a stop requested meanwhile takes effect at that step. Checkpoints travel
as ``torch.save`` bytes and are read with ``weights_only=True``. (``sink_factory``, the older
form, builds a sink inside rank 0's process instead.)

Resume. ``resume`` (a :class:`TrainState`, normally the last checkpoint) is written once per node
and every rank loads it: same weights, optimizer and scheduler state, epoch and position in it.
Random numbers under DDP do not come from the checkpoint: before every optimizer step each rank
reseeds torch's RNG from (seed, step, global rank), so dropout masks differ across ranks (as they
should) and a resumed run draws exactly what the uninterrupted one would have, although only rank
0's RNG state is in the checkpoint. A resumed DDP run therefore equals the uninterrupted DDP run
bit for bit on CPU (tested), dropout included. This relies on the engine's contract that
``should_stop`` is called exactly once before every optimizer step.

Processes: ranks start with ``start_method="forkserver"`` by default: the launcher's forkserver
(one per launcher process, started on first use, kept for later runs) imports torch, this module
and ``torch._inductor.config`` (which ``torch.use_deterministic_algorithms`` imports) once, and
ranks fork from it in milliseconds instead of spending seconds importing; ``"spawn"`` also works.
Each rank uses ``num_threads`` intra-op threads (default: ``spec.num_threads`` capped at the
node's cores divided by ``nproc_per_node``), so co-located ranks do not oversubscribe the CPU.
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from multiprocessing.synchronize import Event
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workers.training.data import Prepared
from workers.training.engine import NullSink, ProgressSink, TrainResult, TrainState, _train
from workers.training.spec import SpecError, TrainSpec

_ACK = b"ok"


class RendezvousError(RuntimeError):
    """The nodes of a run could not meet (port taken, mismatched configuration, duplicate node)."""


class RendezvousTimeout(RendezvousError, TimeoutError):
    """A node's peers (or its master) did not arrive within ``timeout_s``."""


@dataclass(frozen=True)
class NodeStatus:
    """What a node other than node 0 returns: how each of its ranks ended (rank 0 has the result)."""

    node_rank: int
    global_ranks: tuple[int, ...]
    statuses: tuple[str, ...]  # per local rank: "completed" | "early_stopped" | "stopped"
    steps: tuple[int, ...]  # per local rank: optimizer steps done


def choose_backend(spec: TrainSpec, world_size: int) -> str:
    """``nccl`` when every local rank (``world_size`` of them on this machine) can have its own GPU
    and the spec allows CUDA, else ``gloo`` (CPU)."""
    if spec.device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() >= world_size:
        return "nccl"
    return "gloo"


def _default_threads(spec: TrainSpec, nproc_per_node: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(spec.num_threads, cores // nproc_per_node))


def _step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of ``rank`` for optimizer step ``step``: distinct per rank, a pure function."""
    return (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB) % (2**63)


class _StepHook:
    """The engine's ``should_stop`` on every rank; it is called once before every optimizer step.

    It reseeds torch's RNG for the step (see the module docstring) and, every ``check_every``
    steps, all-reduces the node-local stop flag so that all ranks decide together.
    """

    def __init__(
        self, *, flag: Event, check_every: int, seed: int, rank: int, first_step: int, device: torch.device
    ) -> None:
        self.flag, self.check_every, self.seed, self.rank = flag, check_every, seed, rank
        self.step = first_step
        self.buf = torch.zeros(1, dtype=torch.int32, device=device)

    def __call__(self) -> bool:
        step = self.step
        self.step += 1
        torch.manual_seed(_step_seed(self.seed, step, self.rank))
        if step % self.check_every:
            return False
        self.buf.fill_(1 if self.flag.is_set() else 0)
        dist.all_reduce(self.buf, op=dist.ReduceOp.MAX)
        return bool(self.buf.item())


def _pack(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unpack(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


class _RelaySink(NullSink):
    """Rank 0's sink when the caller passed ``sink``: forwards each call to the launcher."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        self.conn.send_bytes(_pack(("metrics", step, epoch, values)))

    def on_log(self, line: str) -> None:
        self.conn.send_bytes(_pack(("log", line)))

    def on_checkpoint(self, state: TrainState) -> None:
        self.conn.send_bytes(_pack(("checkpoint", dict(vars(state)))))  # to_dict() would deep-copy it
        if self.conn.recv_bytes() != _ACK:  # wait until the caller's sink has it (backpressure)
            raise RuntimeError("The launcher did not acknowledge a checkpoint.")

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.conn.send_bytes(_pack(("epoch_end", epoch, metrics)))


class _RelaySinkNoCheckpoints(_RelaySink):
    # The caller's sink discards checkpoints: keep NullSink's method so the loop skips building them.
    on_checkpoint = NullSink.on_checkpoint  # type: ignore[assignment]


@dataclass(frozen=True)
class _RankArgs:
    spec_dict: dict[str, Any]
    prepared_factory: Callable[[], Prepared]
    node_rank: int
    nproc_per_node: int
    world_size: int
    backend: str
    master_addr: str
    master_port: int
    out_dir: str
    resume_path: str | None
    first_step: int
    sink_factory: Callable[[], ProgressSink] | None
    relay: Connection | None
    relay_checkpoints: bool
    stop_flag: Event
    stop_check_every: int
    num_threads: int
    timeout_s: float
    collective_timeout_s: float


def _rank_main(local_rank: int, a: _RankArgs) -> None:
    rank = a.node_rank * a.nproc_per_node + local_rank
    torch.set_num_threads(a.num_threads)
    spec = replace(TrainSpec.from_dict(a.spec_dict), num_threads=a.num_threads)  # unhashed field
    store = dist.TCPStore(a.master_addr, a.master_port, is_master=False, timeout=timedelta(seconds=a.timeout_s))
    dist.init_process_group(
        a.backend,
        store=dist.PrefixStore("pg", store),
        rank=rank,
        world_size=a.world_size,
        timeout=timedelta(seconds=a.collective_timeout_s),
    )
    try:
        if a.backend == "nccl":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        prepared = a.prepared_factory()
        resume = None
        if a.resume_path is not None:
            resume = TrainState.from_dict(torch.load(a.resume_path, weights_only=True, map_location="cpu"))
        sink: ProgressSink = NullSink()
        if rank == 0 and a.relay is not None:
            sink = _RelaySink(a.relay) if a.relay_checkpoints else _RelaySinkNoCheckpoints(a.relay)
        elif rank == 0 and a.sink_factory is not None:
            sink = a.sink_factory()
        hook = _StepHook(
            flag=a.stop_flag,
            check_every=a.stop_check_every,
            seed=spec.seed,
            rank=rank,
            first_step=a.first_step,
            device=device,
        )
        result = _train(
            spec, prepared, sink, resume=resume, should_stop=hook, rank=rank, world=a.world_size, device=device
        )
        if rank == 0:
            torch.save(asdict(result), os.path.join(a.out_dir, "result.pt"))
        torch.save({"status": result.status, "steps": result.steps}, os.path.join(a.out_dir, f"rank-{rank}.pt"))
        # Leave together: a rank tearing gloo down while another still uses the group can abort.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Success: leave without running interpreter teardown. Gloo's C++ threads can still be joinable
    # when static destructors run, and the rank then dies with SIGABRT ("terminate called without an
    # active exception"; seen twice in full-suite runs). The result files are already closed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --- launcher ----------------------------------------------------------------------------------------
def process_context(start_method: str = "forkserver") -> Any:
    """The multiprocessing context ranks start from; a forkserver preloads what every rank imports
    (the preload list has no effect once this process's forkserver runs)."""
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        # torch._inductor.config: torch.use_deterministic_algorithms imports it, 3-5 s per process.
        ctx.set_forkserver_preload([__name__, "torch._inductor.config"])
    return ctx


def _wait_for_port(addr: str, port: int, deadline: float) -> None:
    """Wait until something listens at addr:port (the master's store), without c10d's own retries,
    which overrun the deadline and log a C++ stack per attempt."""
    while True:
        try:
            with socket.create_connection((addr, port), timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise RendezvousTimeout(f"No rendezvous master at {addr}:{port} ({exc}).") from None
            time.sleep(0.2)


def _listen(addr: str, port: int) -> tuple[int, int]:
    """A socket listening on ``addr`` only, for node 0's store (c10d's own binds every interface);
    returns (fd, port), and the store takes the fd over. An ``addr`` that is not local (e.g. a
    virtual IP routed to this node) falls back to every interface."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise RendezvousError(f"Cannot resolve the master address {addr!r}: {exc}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
            # c10d's default, kept for an address that is not local (a virtual IP routed to node 0).
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))  # noqa: S104
        sock.listen(128)
        bound = int(sock.getsockname()[1])
    except OSError as exc:
        sock.close()
        raise RendezvousError(f"Cannot host the rendezvous at {addr}:{port}: {exc}") from None
    return sock.detach(), bound


def _rendezvous(
    *, node_rank: int, nnodes: int, master_addr: str, master_port: int, timeout_s: float, config: dict[str, Any]
) -> tuple[dist.TCPStore, int]:
    """Meet the other nodes' launchers; return the store (node 0 hosts it) and its port."""
    deadline = time.monotonic() + timeout_s
    timeout = timedelta(seconds=timeout_s)
    if node_rank == 0:
        fd, port = _listen(master_addr, master_port)
        try:
            store = dist.TCPStore(
                master_addr, port, is_master=True, wait_for_workers=False, timeout=timeout, master_listen_fd=fd
            )
        except dist.DistError as exc:
            raise RendezvousError(f"Cannot host the rendezvous at {master_addr}:{port}: {exc}") from None
        store.set("config", json.dumps(config, sort_keys=True))
    else:
        port = master_port
        _wait_for_port(master_addr, port, deadline)
        try:
            store = dist.TCPStore(master_addr, port, is_master=False, timeout=timeout)
        except dist.DistError as exc:
            raise RendezvousTimeout(f"Cannot reach the rendezvous at {master_addr}:{port}: {exc}") from None
        theirs = json.loads(store.get("config"))  # node 0 set it before anyone could connect
        if theirs != config:
            message = f"Node {node_rank} does not match node 0: {config} != {theirs}."
            store.set("abort", message)  # node 0 gives up now rather than at its timeout
            raise RendezvousError(message)
    if store.add(f"node/{node_rank}", 1) != 1:
        raise RendezvousError(f"Node rank {node_rank} joined twice.")
    keys = [f"node/{i}" for i in range(nnodes)]
    # Poll rather than store.wait: its timeout logs C++ warnings, and the message names the absent.
    while missing := [i for i, key in enumerate(keys) if not store.check([key])]:
        if store.check(["abort"]):
            raise RendezvousError(store.get("abort").decode())
        if time.monotonic() >= deadline:
            raise RendezvousTimeout(
                f"Nodes {missing} of {nnodes} did not arrive at {master_addr}:{port} within {timeout_s:g} s."
            )
        time.sleep(0.05)
    return store, port


def _supervise(
    ctx: mp.ProcessContext,
    *,
    conn: Connection | None,
    sink: ProgressSink | None,
    stop_flag: Event,
    should_stop: Callable[[], bool] | None,
    stop_poll_s: float,
) -> None:
    """Wait for the ranks; meanwhile poll ``should_stop`` and feed rank 0's relayed calls to ``sink``."""

    def poll_stop() -> None:
        if should_stop is not None and not stop_flag.is_set() and should_stop():
            stop_flag.set()

    def handle(data: bytes) -> None:
        assert sink is not None
        assert conn is not None
        kind, *args = _unpack(data)
        if kind == "metrics":
            sink.on_metrics(*args)
        elif kind == "log":
            sink.on_log(*args)
        elif kind == "epoch_end":
            sink.on_epoch_end(*args)
        elif kind == "checkpoint":
            sink.on_checkpoint(TrainState.from_dict(args[0]))
            poll_stop()  # a stop requested while it was saved applies from this step on
            conn.send_bytes(_ACK)
        else:
            raise RuntimeError(f"Unknown message from rank 0: {kind!r}")

    try:
        next_poll = time.monotonic() + stop_poll_s
        done = False
        while not done:
            waiting: list[Any] = list(ctx.sentinels)
            if conn is not None:
                waiting.append(conn)
            ready = wait(waiting, timeout=max(0.0, next_poll - time.monotonic()))
            if conn is not None and conn in ready:
                try:
                    handle(conn.recv_bytes())
                except EOFError:  # rank 0 is gone; its exit status tells why
                    conn = None
            if time.monotonic() >= next_poll:
                poll_stop()
                next_poll = time.monotonic() + stop_poll_s
            done = ctx.join(timeout=0)
        while conn is not None and conn.poll(0):  # what rank 0 wrote just before it exited
            try:
                handle(conn.recv_bytes())
            except EOFError:
                break
    except BaseException:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
        for p in ctx.processes:
            p.join()
        raise


def run_node(
    spec: TrainSpec,
    prepared_factory: Callable[[], Prepared],
    *,
    node_rank: int,
    nnodes: int,
    nproc_per_node: int,
    master_addr: str,
    master_port: int,
    sink: ProgressSink | None = None,
    sink_factory: Callable[[], ProgressSink] | None = None,
    resume: TrainState | None = None,
    should_stop: Callable[[], bool] | None = None,
    timeout_s: float = 300.0,
    backend: str | None = None,
    stop_poll_s: float = 1.0,
    stop_check_every_steps: int = 1,
    num_threads: int | None = None,
    collective_timeout_s: float = 1800.0,
    start_method: str = "forkserver",
) -> TrainResult | NodeStatus:
    """Run this node's share of a data-parallel run; node 0 returns the :class:`TrainResult`.

    Every node calls it with the same ``spec``, ``nnodes``, ``nproc_per_node``, master address and
    ``resume`` (each node loads its own copy, e.g. the run's last checkpoint), and its own
    ``node_rank`` in ``[0, nnodes)``. Node 0 hosts the rendezvous at ``master_addr:master_port``
    (``master_port=0`` lets the OS choose, for ``nnodes == 1``). Other nodes return a
    :class:`NodeStatus`. ``sink``/``sink_factory`` matter on node 0 only (see the module docstring);
    ``should_stop`` runs in this process every ``stop_poll_s`` seconds. Raises
    :class:`RendezvousTimeout` when the nodes do not all arrive within ``timeout_s``, and
    ``torch.multiprocessing.ProcessRaisedException`` when a rank fails.
    """
    spec.validate()
    world_size = nnodes * nproc_per_node
    if nnodes < 1 or nproc_per_node < 1:
        raise SpecError("A run needs at least one process.", {"world_size": ["Expected nnodes, nproc_per_node >= 1."]})
    if not 0 <= node_rank < nnodes:
        raise SpecError("node_rank is out of range.", {"node_rank": [f"Expected 0 <= node_rank < {nnodes}."]})
    if master_port == 0 and nnodes > 1:
        raise SpecError("Several nodes need a fixed master port.", {"master_port": ["Expected a port number."]})
    if spec.batch_size < world_size:
        raise SpecError(
            "The global batch is smaller than the number of ranks.", {"batch_size": [f"Use at least {world_size}."]}
        )
    if stop_check_every_steps < 1:
        raise SpecError("Stop checks need a period.", {"stop_check_every_steps": ["Expected an integer >= 1."]})
    if not stop_poll_s > 0:
        raise SpecError("Stop polling needs a period.", {"stop_poll_s": ["Expected a number > 0."]})
    if sink is not None and sink_factory is not None:
        raise ValueError("Pass sink or sink_factory, not both.")
    if resume is not None and resume.spec_hash != spec.spec_hash():
        raise SpecError("The checkpoint belongs to a different spec.", {"resume": ["spec_hash does not match."]})
    backend = backend or choose_backend(spec, nproc_per_node)
    if backend not in ("gloo", "nccl"):
        raise SpecError("Unknown backend.", {"backend": ["Expected 'gloo' or 'nccl'."]})
    if backend == "gloo" and spec.precision == "fp16":
        raise SpecError("fp16 training needs CUDA.", {"precision": ["fp16 runs on CUDA (nccl) only."]})
    threads = num_threads or _default_threads(spec, nproc_per_node)
    first_step = resume.step if resume is not None else 0
    config = {
        "nnodes": nnodes,
        "nproc_per_node": nproc_per_node,
        "backend": backend,
        "spec_hash": spec.spec_hash(),
        "resume_step": first_step,
        "stop_check_every_steps": stop_check_every_steps,
    }
    store, port = _rendezvous(
        node_rank=node_rank,
        nnodes=nnodes,
        master_addr=master_addr,
        master_port=master_port,
        timeout_s=timeout_s,
        config=config,
    )
    mpctx = process_context(start_method)
    relay = sink if node_rank == 0 else None
    relay_checkpoints = relay is not None and type(relay).on_checkpoint is not NullSink.on_checkpoint
    parent_conn, child_conn = mpctx.Pipe(duplex=True) if relay is not None else (None, None)
    stop_flag = mpctx.Event()
    with tempfile.TemporaryDirectory(prefix="cohort-ddp-") as tmp:
        resume_path = None
        if resume is not None:
            resume_path = os.path.join(tmp, "resume.pt")
            torch.save(dict(vars(resume)), resume_path)
        args = _RankArgs(
            spec_dict=spec.to_dict(),
            prepared_factory=prepared_factory,
            node_rank=node_rank,
            nproc_per_node=nproc_per_node,
            world_size=world_size,
            backend=backend,
            master_addr=master_addr,
            master_port=port,
            out_dir=tmp,
            resume_path=resume_path,
            first_step=first_step,
            sink_factory=sink_factory if node_rank == 0 else None,
            relay=child_conn,
            relay_checkpoints=relay_checkpoints,
            stop_flag=stop_flag,
            stop_check_every=stop_check_every_steps,
            num_threads=threads,
            timeout_s=timeout_s,
            collective_timeout_s=collective_timeout_s,
        )
        if should_stop is not None and should_stop():
            stop_flag.set()
        ctx = mp.start_processes(_rank_main, args=(args,), nprocs=nproc_per_node, join=False, start_method=start_method)
        if child_conn is not None:
            child_conn.close()  # the ranks hold their copies
        try:
            _supervise(
                ctx, conn=parent_conn, sink=relay, stop_flag=stop_flag, should_stop=should_stop, stop_poll_s=stop_poll_s
            )
        finally:
            if parent_conn is not None:
                parent_conn.close()
            del store  # node 0: the store lives until its ranks, the last users, are done
        if node_rank == 0:
            return TrainResult(**torch.load(os.path.join(tmp, "result.pt"), weights_only=True))
        ranks = tuple(range(node_rank * nproc_per_node, (node_rank + 1) * nproc_per_node))
        ends = [torch.load(os.path.join(tmp, f"rank-{r}.pt"), weights_only=True) for r in ranks]
        return NodeStatus(
            node_rank=node_rank,
            global_ranks=ranks,
            statuses=tuple(e["status"] for e in ends),
            steps=tuple(int(e["steps"]) for e in ends),
        )


def run_ddp(
    spec: TrainSpec,
    prepared_factory: Callable[[], Prepared],
    world_size: int,
    *,
    backend: str | None = None,
    init_method: str | None = None,
    sink: ProgressSink | None = None,
    sink_factory: Callable[[], ProgressSink] | None = None,
    resume: TrainState | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> TrainResult:
    """Train with ``world_size`` processes on this machine; return rank 0's :class:`TrainResult`.

    :func:`run_node` with ``nnodes=1``. ``init_method`` may name the rendezvous
    (``tcp://host:port``); without it, or with a ``file://`` URI (accepted for compatibility), the
    store listens on 127.0.0.1 at a port the OS chooses. ``options`` go to :func:`run_node`.
    """
    if world_size < 1:
        raise SpecError("world_size must be at least 1.", {"world_size": ["Expected an integer >= 1."]})
    addr, port = "127.0.0.1", 0
    if init_method is not None and init_method.startswith("tcp://"):
        url = urlsplit(init_method)
        addr, port = url.hostname or addr, url.port or 0
    elif init_method is not None and not init_method.startswith("file://"):
        raise SpecError("Unknown rendezvous.", {"init_method": ["Expected tcp://host:port or file://path."]})
    result = run_node(
        spec,
        prepared_factory,
        node_rank=0,
        nnodes=1,
        nproc_per_node=world_size,
        master_addr=addr,
        master_port=port,
        backend=backend,
        sink=sink,
        sink_factory=sink_factory,
        resume=resume,
        should_stop=should_stop,
        **options,
    )
    assert isinstance(result, TrainResult)
    return result
