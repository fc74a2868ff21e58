"""Data-parallel training with ``torch.distributed``: ``world_size`` processes, one model replica each.

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
* Rank 0 alone reports to the sink and returns the result (written to a private temporary file
  with ``torch.save`` and read back with ``weights_only=True``).

Not supported yet: cooperative ``should_stop`` and resume under DDP (single-process only).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workers.training.data import Prepared
from workers.training.engine import NullSink, ProgressSink, TrainResult, _train
from workers.training.spec import SpecError, TrainSpec


def choose_backend(spec: TrainSpec, world_size: int) -> str:
    """``nccl`` when every rank can have its own GPU and the spec allows CUDA, else ``gloo`` (CPU)."""
    if spec.device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() >= world_size:
        return "nccl"
    return "gloo"


def _worker(
    rank: int,
    spec_dict: dict[str, Any],
    prepared_factory: Callable[[], Prepared],
    world_size: int,
    backend: str,
    init_method: str,
    out_path: str,
    sink_factory: Callable[[], ProgressSink] | None,
) -> None:
    spec = TrainSpec.from_dict(spec_dict)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        else:
            device = torch.device("cpu")
        prepared = prepared_factory()
        sink: ProgressSink = sink_factory() if (sink_factory is not None and rank == 0) else NullSink()
        result = _train(spec, prepared, sink, rank=rank, world=world_size, device=device)
        if rank == 0:
            torch.save(asdict(result), out_path)
        # Leave together: a rank tearing gloo down while another still uses the group can abort.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Success: leave without running interpreter teardown. Gloo's C++ threads can still be joinable
    # when static destructors run, and the rank then dies with SIGABRT ("terminate called without an
    # active exception"; seen twice in full-suite runs). The result file is already closed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ddp(
    spec: TrainSpec,
    prepared_factory: Callable[[], Prepared],
    world_size: int,
    *,
    backend: str | None = None,
    init_method: str,
    sink_factory: Callable[[], ProgressSink] | None = None,
) -> TrainResult:
    """Train with ``world_size`` spawned processes; return rank 0's :class:`TrainResult`.

    ``init_method`` is the rendezvous the caller owns (``tcp://127.0.0.1:<free port>`` or
    ``file:///<new path>``). ``backend`` defaults to :func:`choose_backend`.
    """
    spec.validate()
    if world_size < 1:
        raise SpecError("world_size must be at least 1.", {"world_size": ["Expected an integer >= 1."]})
    if spec.batch_size < world_size:
        raise SpecError(
            "The global batch is smaller than the number of ranks.", {"batch_size": [f"Use at least {world_size}."]}
        )
    backend = backend or choose_backend(spec, world_size)
    if backend not in ("gloo", "nccl"):
        raise SpecError("Unknown backend.", {"backend": ["Expected 'gloo' or 'nccl'."]})
    if backend == "gloo" and spec.precision == "fp16":
        raise SpecError("fp16 training needs CUDA.", {"precision": ["fp16 runs on CUDA (nccl) only."]})
    with tempfile.TemporaryDirectory(prefix="cohort-ddp-") as tmp:
        out_path = os.path.join(tmp, "result.pt")
        mp.spawn(
            _worker,
            args=(spec.to_dict(), prepared_factory, world_size, backend, init_method, out_path, sink_factory),
            nprocs=world_size,
            join=True,
        )
        data = torch.load(out_path, weights_only=True)
    return TrainResult(**data)
