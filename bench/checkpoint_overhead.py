"""checkpoint_overhead: what a training checkpoint costs, per checkpoint and as lost throughput.

States: the real ``TrainState`` of the two ``training_throughput`` workloads (MLP on breast cancer,
small CNN on digits) after a short run: weights, AdamW moments, scheduler, RNG states, history.

Per checkpoint, on the disk that holds the system temp folder, alternating SAVES times each:

* ``workers.training.checkpoint.save_checkpoint`` as a job's sink calls it (``torch.save`` streamed
  through AES-256-GCM framing into an O_EXCL temp file, fsync, rename, directory fsync, the
  manifest with the plaintext SHA-256 written and fsynced the same way, pruning to ``keep=3``);
* the baseline a bare script writes: ``torch.save(state, path)`` (no encryption, no atomic rename,
  no fsync); and the same plus one fsync of the file, and serialisation alone into memory, to show
  where the time goes;
* ``load_latest`` (what a restarted job reads: newest checkpoint, decrypt, SHA-256 against the
  manifest, ``torch.load(weights_only=True)``) followed by ``TrainState.from_dict``.

Throughput: ``train`` with ``NullSink`` (builds no checkpoint states) against ``train`` with a sink
that saves every checkpoint the engine emits, as the job sink does: at each epoch end (the engine's
policy), and with ``checkpoint_every_steps`` = N on top. Same spec otherwise (the interval is not
part of the spec hash), evaluation included on every side, ROUNDS rounds in rotating order; the
ratios and the in-loop cost of one checkpoint (the time difference over the checkpoints written:
the engine's state snapshot plus the save) are medians over rounds of each run paired with the run
without checkpoints of the same round.
"""

from __future__ import annotations

import dataclasses
import io
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import log, write_result

NAME = "checkpoint_overhead"
TARGET_MS = 50.0  # per checkpoint of these states: a checkpoint a second then costs at most ~5%
KEY = bytes(range(32))
CONTEXT = b"cohort/checkpoint/bench/0"


def _sizes(quick: bool) -> tuple[int, int]:
    """(saves and loads timed per state, throughput rounds)."""
    return (10, 3) if quick else (30, 9)


class _CaptureSink:
    """Keeps the last state the engine emits (the engine then builds snapshots: it is not a NullSink)."""

    def __init__(self) -> None:
        self.state: Any = None

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        return None

    def on_log(self, line: str) -> None:
        return None

    def on_checkpoint(self, state: Any) -> None:
        self.state = state

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        return None


class _SavingSink(_CaptureSink):
    """Saves every checkpoint the engine emits, exactly as the job sink (``DjangoSink``) does."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self.saved = 0

    def on_checkpoint(self, state: Any) -> None:
        from workers.training.checkpoint import save_checkpoint

        save_checkpoint(state.to_dict(), self.directory, key=KEY, context=CONTEXT, step=state.step)
        self.saved += 1


def _io_costs(state: dict[str, Any], root: Path, saves: int) -> dict[str, Any]:
    import torch

    from workers.training.checkpoint import load_latest, save_checkpoint
    from workers.training.engine import TrainState

    ckpt_dir, plain_dir = root / "ckpt", root / "plain"
    plain_dir.mkdir()
    times: dict[str, list[float]] = {k: [] for k in ("save", "plain", "plain_fsync", "serialize", "load")}
    size = plain_size = serialized = 0
    clock = time.perf_counter
    for i in range(saves):
        t0 = clock()
        info = save_checkpoint(state, ckpt_dir, key=KEY, context=CONTEXT, step=i + 1)
        t1 = clock()
        path = plain_dir / f"ckpt-{i % 3}.pt"  # keep 3, like the real one
        torch.save(state, path)
        t2 = clock()
        with open(plain_dir / "fsynced.pt", "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        t3 = clock()
        buf = io.BytesIO()
        torch.save(state, buf)
        t4 = clock()
        found = load_latest(ckpt_dir, key=KEY, context=CONTEXT)
        if found is None or found[1].step != i + 1:
            raise RuntimeError(f"load_latest did not return checkpoint {i + 1}")
        TrainState.from_dict(found[0])
        t5 = clock()
        for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            times[k].append(dt * 1000)
        size, plain_size, serialized = info.size, path.stat().st_size, len(buf.getvalue())
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "save_ms": round(med["save"], 2),
        "save_p95_ms": round(sorted(times["save"])[max(0, round(0.95 * saves) - 1)], 2),
        "plain_torch_save_ms": round(med["plain"], 2),
        "plain_fsync_ms": round(med["plain_fsync"], 2),
        "serialize_ms": round(med["serialize"], 2),
        "load_latest_ms": round(med["load"], 2),
        "bytes": size,
        "plain_bytes": plain_size,
        "serialized_bytes": serialized,
    }


def _throughput(spec: Any, prepared: Any, root: Path, every: int, rounds: int) -> dict[str, Any]:
    from workers.training.engine import NullSink, train

    configs: dict[str, tuple[Any, bool]] = {
        "none": (spec, False),
        "epoch_end": (spec, True),
        "every_n": (dataclasses.replace(spec, checkpoint_every_steps=every), True),
    }
    seconds: dict[str, list[float]] = {k: [] for k in configs}
    saved: dict[str, int] = {}
    steps = 0
    train(spec, prepared, NullSink())  # warm-up
    for rnd in range(rounds):
        order = list(configs)
        order = order[rnd % 3 :] + order[: rnd % 3]
        for key in order:
            run_spec, saving = configs[key]
            sink: Any = NullSink()
            if saving:
                sink = _SavingSink(root / f"run-{key}-{rnd}")
            t0 = time.perf_counter()
            result = train(run_spec, prepared, sink)
            seconds[key].append(time.perf_counter() - t0)
            saved[key] = sink.saved if saving else 0
            steps = result.steps
    samples = len(prepared.x_train) * spec.epochs
    out: dict[str, Any] = {"steps": steps, "epochs": spec.epochs, "every_n_steps": every}
    none = seconds["none"]
    for key in configs:
        out[f"{key}_samples_per_s"] = round(samples / statistics.median(seconds[key]), 1)
        if key != "none":
            # Paired with the run without checkpoints of the same round (the machine's load drifts).
            ratios = [a / b for a, b in zip(none, seconds[key], strict=True)]
            extra = [(b - a) * 1000 / max(saved[key], 1) for a, b in zip(none, seconds[key], strict=True)]
            out[f"{key}_checkpoints"] = saved[key]
            out[f"{key}_ratio"] = round(statistics.median(ratios), 3)
            out[f"{key}_ms_per_checkpoint"] = round(statistics.median(extra), 2)
    return out


def run(ctx: Any) -> dict[str, Any]:
    from bench.training_throughput import _workloads
    from workers.training.engine import train

    opts = ctx.opts
    saves, rounds = _sizes(opts.quick)
    per: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cohort-ckpt-bench-") as tmp:
        root = Path(tmp)
        for name, spec, prepared in _workloads(opts.quick):
            # Short runs: every checkpoint costs the same whatever the epoch count.
            spec = dataclasses.replace(spec, epochs=2 if opts.quick else (10 if name.startswith("mlp") else 3))
            steps_per_epoch = -(-len(prepared.x_train) // spec.batch_size)
            every = max(1, steps_per_epoch // 2)  # two more checkpoints per epoch
            capture = _CaptureSink()
            train(spec, prepared, capture)
            state = capture.state.to_dict()
            work = root / name
            work.mkdir()
            costs = _io_costs(state, work, saves)
            tput = _throughput(spec, prepared, work, every, rounds)
            per[name] = {**costs, **tput}
            log(
                f"{NAME}: {name} save_checkpoint {costs['save_ms']:.1f} ms ({costs['bytes']:,} B) vs torch.save "
                f"{costs['plain_torch_save_ms']:.1f} ms; load_latest {costs['load_latest_ms']:.1f} ms; throughput "
                f"x{tput['epoch_end_ratio']:.3f} (epoch ends), x{tput['every_n_ratio']:.3f} (+ every {every} steps)"
            )
        fs_root = str(Path(tempfile.gettempdir()).resolve())
    worst = max(per.values(), key=lambda w: w["save_ms"])
    return write_result(
        NAME,
        unit="ms per checkpoint",
        value=worst["save_ms"],
        baseline="torch.save of the same TrainState to a file (no encryption, atomic rename or fsync)",
        baseline_value=worst["plain_torch_save_ms"],
        ratio=worst["save_ms"] / worst["plain_torch_save_ms"],
        target=f"save_checkpoint <= {TARGET_MS:.0f} ms per checkpoint of these states (worst shown)",
        command=opts.command,
        met=worst["save_ms"] <= TARGET_MS,
        workloads=per,
        saves=saves,
        rounds=rounds,
        statistic="median",
        directory=f"a temporary folder under {fs_root}",
        evaluation="included on every side of the throughput comparison",
        quick=opts.quick,
    )
