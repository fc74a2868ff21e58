"""Data-parallel training (gloo on CPU): equivalence with single-process training, several nodes,
cooperative stop, checkpoint + resume, rendezvous timeouts.

Tolerances:
* DDP vs single process with the same global batch: max |Δweight| < 1e-5 (fp32 MLP, SGD). The only
  difference is float summation order (the all-reduce adds the shards' partial sums).
* A resumed DDP run vs the uninterrupted DDP run: bit-identical (``torch.equal``), dropout included,
  since every rank reseeds its RNG per (seed, step, rank) and the all-reduce order is fixed.

"Nodes" are separate Python processes on 127.0.0.1, each calling ``run_node``: node 0 is this test
process (as a Celery worker would be), node 1 a child of this process's forkserver. Node 1 forks
its rank (``start_method="fork"``) instead of starting a second forkserver: that would import torch
once more (5-10 s on a busy 2-core machine) and test nothing new; node 0 and ``run_ddp`` use the
default forkserver."""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.multiprocessing import ProcessRaisedException

from workers.schema import Column, DatasetSchema
from workers.training.data import Prepared, prepare_tabular
from workers.training.distributed import (
    NodeStatus,
    RendezvousError,
    RendezvousTimeout,
    choose_backend,
    process_context,
    run_ddp,
    run_node,
)
from workers.training.engine import NullSink, TrainResult, TrainState, train
from workers.training.spec import ModelSpec, OptimizerSpec, TrainSpec

TOLERANCE = 1e-5


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def blobs_factory(spec: TrainSpec, n: int = 480, d: int = 6) -> Callable[[], Prepared]:
    """A picklable factory of a small generated binary task (ranks import no test module)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d))
    y = (x @ rng.normal(size=d) + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(d)}, "y": y})
    schema = DatasetSchema(
        [Column(f"f{i}", "float") for i in range(d)] + [Column("y", "integer", "label")],
        label="y",
        task="binary_classification",
    )
    return functools.partial(prepare_tabular, table, schema, spec)


def _broken_factory() -> Prepared:
    raise RuntimeError("dataset unavailable")


def _node_main(kwargs: dict[str, Any], conn: Any) -> None:
    """A second "node": its own process calling run_node; sends back its NodeStatus (or error)."""
    try:
        conn.send(run_node(**kwargs))
    except BaseException as exc:
        conn.send(exc)


def start_node(**kwargs: Any) -> Callable[[], NodeStatus]:
    ctx = process_context()
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_node_main, args=({**kwargs, "start_method": "fork"}, there))
    proc.start()

    def result() -> NodeStatus:
        assert here.poll(60), "node 1 did not finish"
        out = here.recv()
        proc.join(10)
        if isinstance(out, BaseException):
            raise out
        return out

    return result


class Recorder(NullSink):
    def __init__(self) -> None:
        self.checkpoints: list[TrainState] = []
        self.steps: list[int] = []
        self.logs: list[str] = []

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        self.steps.append(step)

    def on_log(self, line: str) -> None:
        self.logs.append(line)

    def on_checkpoint(self, state: TrainState) -> None:
        self.checkpoints.append(state)


def test_two_gloo_ranks_match_single_process(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    cols = {f"f{i}": d.data[:, i] for i in range(d.data.shape[1])}
    cols["y"] = d.target.astype(np.int64)
    table = pa.table(cols)
    schema = DatasetSchema(
        [Column(f"f{i}", "float") for i in range(d.data.shape[1])] + [Column("y", "integer", "label")],
        label="y",
        task="binary_classification",
    )
    spec = TrainSpec(
        model=ModelSpec("mlp", {"hidden": [16], "dropout": 0.0}),  # no dropout: DDP ranks draw their own
        optimizer=OptimizerSpec("sgd", lr=0.05, momentum=0.9),
        epochs=3,
        batch_size=30,  # global; 15 per rank; 455 train rows -> a short last batch of 5 (3 + 2)
        grad_accum_steps=2,
        seed=3,
        device="cpu",
    )
    assert choose_backend(spec, 2) == "gloo"
    factory = functools.partial(prepare_tabular, table, schema, spec)
    single = train(spec, factory(), NullSink())
    ddp = run_ddp(spec, factory, 2, backend="gloo", init_method=(tmp_path / "rendezvous").as_uri())
    assert ddp.status == "completed" and ddp.steps == single.steps and ddp.samples_seen == single.samples_seen
    diff = max_diff(single.model_state, ddp.model_state)
    print(f"ddp max abs weight diff {diff:.3g}")
    assert diff < TOLERANCE, diff
    assert abs(ddp.final_metrics["val_accuracy"] - single.final_metrics["val_accuracy"]) <= 1 / len(factory().y_val)


def test_two_nodes_match_single_process() -> None:
    spec = TrainSpec(
        model=ModelSpec("mlp", {"hidden": [16], "dropout": 0.0}),
        optimizer=OptimizerSpec("sgd", lr=0.05, momentum=0.9),
        epochs=2,
        batch_size=25,  # 384 train rows: a short last batch of 9 (5 + 4)
        seed=5,
        device="cpu",
    )
    factory = blobs_factory(spec)
    port = free_port()
    common: dict[str, Any] = dict(nnodes=2, nproc_per_node=1, master_addr="127.0.0.1", master_port=port, timeout_s=60)
    node1 = start_node(spec=spec, prepared_factory=factory, node_rank=1, **common)
    ddp = run_node(spec, factory, node_rank=0, **common)
    status = node1()
    single = train(spec, factory(), NullSink())
    assert isinstance(ddp, TrainResult) and ddp.status == "completed" and ddp.steps == single.steps
    assert status == NodeStatus(node_rank=1, global_ranks=(1,), statuses=("completed",), steps=(single.steps,))
    diff = max_diff(single.model_state, ddp.model_state)
    print(f"2-node max abs weight diff {diff:.3g}")
    assert diff < TOLERANCE, diff


# --- stop, checkpoint, resume -------------------------------------------------------------------------
RESUME_SPEC = TrainSpec(
    model=ModelSpec("mlp", {"hidden": [16], "dropout": 0.2}),  # RNG in play: resume must restore it per rank
    optimizer=OptimizerSpec("adam", lr=0.01),
    epochs=3,
    batch_size=30,  # 384 train rows: 13 steps per epoch, a short last batch of 24
    checkpoint_every_steps=5,
    log_every_steps=1,
    seed=11,
    device="cpu",
)


@pytest.fixture(scope="module")
def uninterrupted() -> TrainResult:
    return run_ddp(RESUME_SPEC, blobs_factory(RESUME_SPEC), 2)


@pytest.fixture(scope="module")
def interrupted() -> tuple[TrainResult, NodeStatus, Recorder]:
    """Two nodes; node 0's should_stop turns true once the sink has saved its first checkpoint."""
    factory = blobs_factory(RESUME_SPEC)
    port = free_port()
    common: dict[str, Any] = dict(nnodes=2, nproc_per_node=1, master_addr="127.0.0.1", master_port=port, timeout_s=60)
    node1 = start_node(spec=RESUME_SPEC, prepared_factory=factory, node_rank=1, **common)
    sink = Recorder()
    result = run_node(
        RESUME_SPEC,
        factory,
        node_rank=0,
        sink=sink,
        should_stop=lambda: len(sink.checkpoints) > 0,
        stop_poll_s=0.05,
        **common,
    )
    assert isinstance(result, TrainResult)
    return result, node1(), sink


def test_stop_flag_stops_every_rank_at_the_same_step(interrupted: tuple[TrainResult, NodeStatus, Recorder]) -> None:
    result, node1, sink = interrupted
    # The launcher asks should_stop right after the sink saved the step-5 checkpoint, before rank 0
    # goes on: every rank stops before step 6.
    assert result.status == "stopped" and result.steps == 5
    assert node1.statuses == ("stopped",) and node1.steps == (5,)
    assert [c.step for c in sink.checkpoints] == [5, 5]  # the periodic one, then the one at the stop
    assert sink.steps == [1, 2, 3, 4, 5] and any("stop requested at step 5" in line for line in sink.logs)


def test_resumed_ddp_run_equals_uninterrupted(
    interrupted: tuple[TrainResult, NodeStatus, Recorder], uninterrupted: TrainResult
) -> None:
    last = interrupted[2].checkpoints[-1]
    assert last.step == 5 and last.batch_in_epoch == 5
    sink = Recorder()
    resumed = run_ddp(RESUME_SPEC, blobs_factory(RESUME_SPEC), 2, resume=last, sink=sink)
    assert resumed.status == uninterrupted.status == "completed"
    assert resumed.steps == uninterrupted.steps == 39 and sorted(set(sink.steps)) == list(range(6, 40))
    assert resumed.history == uninterrupted.history
    diff = max_diff(resumed.model_state, uninterrupted.model_state)
    print(f"resumed vs uninterrupted max abs weight diff {diff:.3g}")
    assert all(torch.equal(resumed.model_state[k], uninterrupted.model_state[k]) for k in resumed.model_state)
    assert [c.step for c in sink.checkpoints] == [10, 13, 15, 20, 25, 26, 30, 35, 39]


# --- rendezvous timeouts ------------------------------------------------------------------------------
@pytest.mark.parametrize("node_rank", [0, 1], ids=["peer-never-comes", "master-never-comes"])
def test_missing_peer_raises_rendezvous_timeout(node_rank: int) -> None:
    spec = TrainSpec(model=ModelSpec("mlp", {"hidden": [4]}), batch_size=8, device="cpu")
    started = time.monotonic()
    with pytest.raises(RendezvousTimeout, match=r"did not arrive|No rendezvous master"):
        run_node(
            spec,
            blobs_factory(spec),
            node_rank=node_rank,
            nnodes=2,
            nproc_per_node=1,
            master_addr="127.0.0.1",
            master_port=free_port(),
            timeout_s=1.5,
        )
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 5.0, elapsed  # the given timeout (c10d's client alone retries to ~2.6x it)


def test_nodes_with_different_specs_refuse_to_meet() -> None:
    spec = TrainSpec(model=ModelSpec("mlp", {"hidden": [4]}), batch_size=8, device="cpu")
    other = replace(spec, seed=spec.seed + 1)
    port = free_port()
    errors: list[BaseException] = []

    def node0() -> None:
        try:
            run_node(
                spec,
                blobs_factory(spec),
                node_rank=0,
                nnodes=2,
                nproc_per_node=1,
                master_addr="127.0.0.1",
                master_port=port,
                timeout_s=30,
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=node0)
    thread.start()
    started = time.monotonic()
    with pytest.raises(RendezvousError, match="does not match node 0"):
        run_node(
            other,
            blobs_factory(other),
            node_rank=1,
            nnodes=2,
            nproc_per_node=1,
            master_addr="127.0.0.1",
            master_port=port,
            timeout_s=30,
        )
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], RendezvousError) and "does not match" in str(errors[0])
    assert time.monotonic() - started < 10  # node 0 did not wait for its 30 s timeout


def test_a_crashing_rank_on_another_node_fails_the_run_promptly() -> None:
    spec = TrainSpec(model=ModelSpec("mlp", {"hidden": [4]}), batch_size=8, device="cpu")
    port = free_port()
    common: dict[str, Any] = dict(nnodes=2, nproc_per_node=1, master_addr="127.0.0.1", master_port=port, timeout_s=60)
    node1 = start_node(spec=spec, prepared_factory=_broken_factory, node_rank=1, **common)
    started = time.monotonic()
    with pytest.raises(ProcessRaisedException):  # gloo: "Connection closed by peer"
        run_node(spec, blobs_factory(spec), node_rank=0, **common)
    assert time.monotonic() - started < 30
    with pytest.raises(ProcessRaisedException, match="dataset unavailable"):
        node1()
