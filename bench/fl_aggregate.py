"""fl_aggregate: FedAvg over N participants' updates (default 10 x 10M float32), against a read-only
pass over the same bytes and against Flower 1.42's aggregation, with its peak memory.

The platform side is ``make_strategy("fedavg").aggregate(global_state, updates, deltas=True)``,
``updates`` a generator. Two ways of producing the updates are measured:

* **storage path** (the headline): each participant's delta is a safetensors file on disk, loaded
  by ``workers.training.weights.load_weights`` when the generator is asked for it, exactly as
  ``apps.federation.services.rounds._close_train``'s ``updates()`` does through
  ``storage.load_tensors`` (minus the decryption that function does first; the files are in the
  page cache after the warm-up, so the disk itself is not timed). The baseline is the same
  generator with every tensor summed once (``Tensor.sum``) instead of aggregated: the read-only
  pass over the same bytes through the same loading path.
* **in memory**: the same updates preallocated as tensors, the generator only yielding them, and
  the read-only pass summing them. This prices the aggregation alone (float64 accumulation, so it
  moves about five times the bytes of a float32 read); it is also what Flower's aggregation is
  compared with, since Flower's functions take arrays already in memory.

One thread on both sides (NumPy's element-wise operations are single-threaded). Rounds alternate
the aggregate and its read pass; ratios are medians of per-round ratios. The result is checked
against a plain float64 reference mean (and against Flower's when it ran).

Memory: fresh subprocesses (``python -m bench.fl_aggregate --probe MODE``) build the global state
(and, in memory mode, the updates) and then run one aggregation; the figure is the growth of peak
RSS (``VmHWM``, reset to the current RSS through ``/proc/self/clear_refs`` just before the call;
it sees torch's allocations, which ``tracemalloc`` does not) over the RSS at that moment, as a
multiple of one update's bytes. The storage path is probed with all N participants and with 2:
equal figures mean memory is O(model), not O(participants x model).

Sizes: ``COHORT_BENCH_FL_ELEMENTS`` (float32 elements per update; default 10,000,000, ``--quick``
1,000,000), ``COHORT_BENCH_FL_SITES`` (default 10), ``COHORT_BENCH_FL_REPEATS`` (default 7),
``COHORT_BENCH_FLOWER=0`` to leave Flower out (it then counts as unavailable).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import ROOT, log, write_result

NAME = "fl_aggregate"
TARGET_READ_RATIO = 0.8
TARGET_FLOWER_RATIO = 8.0
TARGET_EXTRA_UPDATES = 3.0
SEED = 20251206
FLOWER_SCRIPT = ROOT / "bench" / "flower" / "aggregate_bench.sh"
FLOWER_TIMEOUT_S = 900  # the first run may build Flower's venv


# --- the workload --------------------------------------------------------------------------------
def layout(elements: int) -> dict[str, tuple[int, ...]]:
    """A model-like state of float32 tensors with exactly ``elements`` elements in total (>= 10,000).

    At 10M: ``embed.weight`` (4000, 1000), ``layer1.weight`` (2000, 2000), ``layer1.bias`` (2000,),
    ``head.weight`` (1000, 1998).
    """
    if elements < 10_000:
        raise ValueError(f"{NAME}: at least 10,000 elements per update, got {elements}")
    rows = elements // 2500
    side = math.isqrt(elements * 2 // 5)
    rest = elements - rows * 1000 - side * side - side
    return {
        "embed.weight": (rows, 1000),
        "layer1.weight": (side, side),
        "layer1.bias": (side,),
        "head.weight": (1000, rest // 1000) if rest % 1000 == 0 else (rest,),
    }


def example_counts(sites: int) -> list[int]:
    return [100 + 37 * i for i in range(sites)]


def make_state(shapes: Mapping[str, tuple[int, ...]], seed: int, scale: float = 1.0) -> dict[str, Any]:
    """Seeded normal tensors (``scale`` applied in place: no second full-size temporary)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g).mul_(scale) for k, shape in shapes.items()}


def global_state(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    return make_state(shapes, SEED)


def site_delta(shapes: Mapping[str, tuple[int, ...]], index: int) -> dict[str, Any]:
    return make_state(shapes, SEED + 1 + index, scale=0.01)


def update_paths(folder: Path, sites: int) -> list[Path]:
    return [folder / f"site{i:03d}.safetensors" for i in range(sites)]


def file_updates(paths: Sequence[Path], weights: Sequence[int]) -> Iterator[tuple[Any, int]]:
    """Each participant's delta loaded when asked for: ``rounds._close_train``'s ``updates()``."""
    from workers.training.weights import load_weights

    for path, n in zip(paths, weights, strict=True):
        delta, _meta = load_weights(path)
        yield delta, n


def memory_updates(deltas: Sequence[Mapping[str, Any]], weights: Sequence[int]) -> Iterator[tuple[Any, int]]:
    yield from zip(deltas, weights, strict=True)


def fedavg(base: Mapping[str, Any], updates: Iterable[tuple[Any, int]]) -> dict[str, Any]:
    """What the platform runs: a fresh FedAvg from the registry, deltas, streaming."""
    from workers.federated.strategies import make_strategy

    return make_strategy("fedavg").aggregate(base, updates, deltas=True)


def read_pass(updates: Iterable[tuple[Mapping[str, Any], int]]) -> float:
    """The baseline: every tensor of every update read once (summed), nothing kept."""
    total = 0.0
    for tensors, _n in updates:
        for tensor in tensors.values():
            total += float(tensor.sum())
    return total


def reference_mean(
    base: Mapping[str, Any], deltas: Sequence[Mapping[str, Any]], weights: Sequence[int]
) -> dict[str, Any]:
    """``global + sum(n_i * delta_i) / sum(n_i)`` in float64, rounded to the global's dtype: plain
    torch, independent of the strategies' slicing and scratch buffers."""
    out = {}
    for key, ref in base.items():
        acc = sum(d[key].double() * n for d, n in zip(deltas, weights, strict=True))
        out[key] = (acc / sum(weights) + ref.double()).to(ref.dtype)
    return out


def max_abs_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    assert list(a) == list(b), (list(a), list(b))
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# --- memory probes (run in a fresh process) ------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_bytes() -> int:
    """Peak RSS since the last :func:`reset_peak` (``VmHWM``; ``ru_maxrss`` reads the same counter)."""
    return _status_kib("VmHWM") * 1024


def probe(mode: str, folder: Path, elements: int, sites: int) -> dict[str, Any]:
    """One aggregation (or read pass) in this process; the growth of its peak RSS over the RSS
    just before it. ``mode``: ``files`` (FedAvg from the files), ``read`` (read pass over the
    files), ``memory`` (FedAvg over updates built in this process first)."""
    import gc

    import torch

    torch.set_num_threads(1)
    shapes = layout(elements)
    base = global_state(shapes)
    weights = example_counts(sites)
    deltas = [site_delta(shapes, i) for i in range(sites)] if mode == "memory" else []
    paths = update_paths(folder, sites)
    gc.collect()
    was_reset = reset_peak()
    rss_before, peak_before = rss_bytes(), peak_bytes()
    if mode == "files":
        fedavg(base, file_updates(paths, weights))
    elif mode == "read":
        read_pass(file_updates(paths, weights))
    elif mode == "memory":
        fedavg(base, memory_updates(deltas, weights))
    else:
        raise ValueError(mode)
    peak_after = peak_bytes()
    return {
        "mode": mode,
        "sites": sites,
        "peak_reset": was_reset,
        "rss_before": rss_before,
        "peak_before": peak_before,
        "peak_after": peak_after,
        # None: the peak could not be reset and the call never rose above it (its own peak is unknown).
        "extra_peak_bytes": peak_after - rss_before if (was_reset or peak_after > peak_before) else None,
    }


def run_probe(mode: str, folder: Path, elements: int, sites: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.fl_aggregate", "--probe", mode, "--dir", str(folder)]
    cmd += ["--elements", str(elements), "--sites", str(sites)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --- Flower --------------------------------------------------------------------------------------
def run_flower(config: dict[str, Any], folder: Path) -> tuple[dict[str, Any] | None, str]:
    """Flower's figures from its own venv, or ``(None, why not)``."""
    if os.environ.get("COHORT_BENCH_FLOWER", "1").lower() in {"0", "off", "no", "false"}:
        return None, "left out (COHORT_BENCH_FLOWER=0)"
    config_path = folder / "flower.json"
    config_path.write_text(json.dumps(config))
    try:
        done = subprocess.run(
            ["bash", str(FLOWER_SCRIPT), str(config_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=FLOWER_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return None, f"exit {done.returncode}: {' / '.join(tail)[:300]}"
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1])), ""
    except (ValueError, IndexError):
        return None, f"unreadable output: {done.stdout[-300:]!r}"


# --- the benchmark -------------------------------------------------------------------------------
def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _median_ratio(base: Sequence[float], ours: Sequence[float]) -> float:
    return statistics.median(b / o for b, o in zip(base, ours, strict=True))


def _multiple(extra: int | None, update_bytes: int) -> float | None:
    return None if extra is None else round(extra / update_bytes, 3)


def run(ctx: Any) -> dict[str, Any]:
    import torch

    from workers.training.weights import save_weights

    opts = ctx.opts
    elements = _env_int("COHORT_BENCH_FL_ELEMENTS", 1_000_000 if opts.quick else 10_000_000)
    sites = _env_int("COHORT_BENCH_FL_SITES", 10)
    repeats = _env_int("COHORT_BENCH_FL_REPEATS", 7)
    shapes = layout(elements)
    weights = example_counts(sites)
    update_bytes = elements * 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="cohort-fl-aggregate-") as tmp:
            folder = Path(tmp)
            paths = update_paths(folder, sites)
            base = global_state(shapes)
            deltas = [site_delta(shapes, i) for i in range(sites)]
            for path, delta in zip(paths, deltas, strict=True):
                save_weights(delta, path, {})
            save_weights(base, folder / "global.safetensors", {})
            log(f"{NAME}: {sites} x {elements:,} float32 ({update_bytes / 1e6:,.0f} MB each) in {folder}")

            # Correctness first: both paths against the plain reference mean.
            reference = reference_mean(base, deltas, weights)
            from_files = fedavg(base, file_updates(paths, weights))
            from_memory = fedavg(base, memory_updates(deltas, weights))
            error = max_abs_diff(from_files, reference)
            identical = all(torch.equal(from_files[k], from_memory[k]) for k in base)
            save_weights(from_memory, folder / "ours.safetensors", {})
            del reference, from_files

            read_pass(file_updates(paths, weights))  # warm-up (and page cache)
            read_pass(memory_updates(deltas, weights))
            times: dict[str, list[float]] = {"files": [], "files_read": [], "memory": [], "memory_read": []}
            faults: dict[str, list[int]] = {k: [] for k in times}
            for rnd in range(repeats):
                steps = (
                    ("files", lambda: fedavg(base, file_updates(paths, weights))),
                    ("files_read", lambda: read_pass(file_updates(paths, weights))),
                    ("memory", lambda: fedavg(base, memory_updates(deltas, weights))),
                    ("memory_read", lambda: read_pass(memory_updates(deltas, weights))),
                )
                for key, step in steps if rnd % 2 == 0 else steps[::-1]:
                    f0, t0 = _minor_faults(), time.perf_counter()
                    step()
                    times[key].append(time.perf_counter() - t0)
                    faults[key].append(_minor_faults() - f0)
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio = _median_ratio(times["files_read"], times["files"])
            memory_ratio = _median_ratio(times["memory_read"], times["memory"])
            log(f"{NAME}: storage path {med['files']:.3f} s vs read pass {med['files_read']:.3f} s (x{ratio:.3f}); "
                f"in memory {med['memory']:.3f} s vs {med['memory_read']:.3f} s (x{memory_ratio:.3f})")  # fmt: skip
            deltas.clear()  # the probes below run in fresh processes

            few = min(2, sites)
            mem = {
                "files": run_probe("files", folder, elements, sites),
                "files_few": run_probe("files", folder, elements, few),
                "read": run_probe("read", folder, elements, sites),
                "memory": run_probe("memory", folder, elements, sites),
            }
            multiples = {k: _multiple(v["extra_peak_bytes"], update_bytes) for k, v in mem.items()}
            log(f"{NAME}: extra peak RSS in updates: {multiples}")

            flower, flower_why = run_flower(
                {
                    "files": [str(p) for p in paths],
                    "weights": weights,
                    "repeats": repeats,
                    "global": str(folder / "global.safetensors"),
                    "ours": str(folder / "ours.safetensors"),
                },
                folder,
            )
    finally:
        torch.set_num_threads(threads)

    flower_ratio: float | None = None
    flower_fig: dict[str, Any] = {"flower_available": flower is not None, "flower_unavailable_reason": flower_why}
    if flower is not None:
        flower_ratio = flower["aggregate_seconds_median"] / med["memory"]
        flower_fig |= {
            "flower_version": flower["flwr"],
            "flower_numpy": flower["numpy"],
            "flower_aggregate_s": round(flower["aggregate_seconds_median"], 4),
            "flower_arrayrecords_s": round(flower["aggregate_arrayrecords_seconds_median"], 4),
            "flower_ratio": round(flower_ratio, 3),
            "flower_over_read_pass": round(flower["aggregate_seconds_median"] / med["memory_read"], 3),
            "flower_arrayrecords_ratio": round(flower["aggregate_arrayrecords_seconds_median"] / med["memory"], 3),
            "flower_extra_peak_updates": _multiple(flower["aggregate_extra_peak_bytes"], update_bytes),
            "flower_max_abs_diff": flower.get("max_abs_diff_aggregate"),
            "flower_arrayrecords_max_abs_diff": flower.get("max_abs_diff_arrayrecords"),
        }
        log(
            f"{NAME}: Flower aggregate {flower['aggregate_seconds_median']:.3f} s, aggregate_arrayrecords "
            f"{flower['aggregate_arrayrecords_seconds_median']:.3f} s (x{flower_ratio:.2f} ours in memory)"
        )
    else:
        log(f"{NAME}: Flower baseline unavailable: {flower_why}")

    extra_memory = multiples["memory"]
    memory_ok = extra_memory is not None and extra_memory <= TARGET_EXTRA_UPDATES
    few_extra, all_extra = mem["files_few"]["extra_peak_bytes"], mem["files"]["extra_peak_bytes"]
    flat = few_extra is not None and all_extra is not None and all_extra <= 1.1 * few_extra + update_bytes / 10
    correct = error <= 1e-6 and identical
    if flower is not None:  # Flower computes in float32: it agrees to about one float32 rounding
        correct = correct and all(
            flower.get(k) is not None and flower[k] <= 1e-5
            for k in ("max_abs_diff_aggregate", "max_abs_diff_arrayrecords")
        )
    met = bool(
        correct and ratio >= TARGET_READ_RATIO and memory_ok and flat
        and flower_ratio is not None and flower_ratio >= TARGET_FLOWER_RATIO
    )  # fmt: skip
    return write_result(
        NAME,
        unit="ms",
        value=med["files"] * 1000,
        baseline="read-only pass over the same bytes: the same generator loading each site's safetensors "
        "delta from disk (page cache) through load_weights, every tensor summed once",
        baseline_value=med["files_read"] * 1000,
        ratio=ratio,
        target=f"read pass / aggregate >= {TARGET_READ_RATIO}; Flower's aggregate / ours >= {TARGET_FLOWER_RATIO:g}; "
        f"extra peak <= {TARGET_EXTRA_UPDATES:g} x one update, flat in participants",
        command=opts.command,
        met=met,
        sites=sites,
        elements=elements,
        update_mb=round(update_bytes / 1e6, 1),
        threads=1,
        runs=repeats,
        seconds={k: [round(t, 4) for t in v] for k, v in times.items()},
        # Fresh pages (one minor fault per 4 KiB) cost more than the arithmetic on the storage path.
        minor_faults_median={k: int(statistics.median(v)) for k, v in faults.items()},
        memory_ms=round(med["memory"] * 1000, 3),
        memory_read_ms=round(med["memory_read"] * 1000, 3),
        memory_ratio=round(memory_ratio, 3),
        extra_peak_updates=multiples,
        extra_peak_probes=mem,
        max_abs_error_vs_reference=error,
        files_equal_memory=identical,
        **flower_fig,
        quick=opts.quick,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fl_aggregate", description="memory probe (internal)")
    parser.add_argument("--probe", choices=("files", "read", "memory"), required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--elements", type=int, required=True)
    parser.add_argument("--sites", type=int, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.probe, args.dir, args.elements, args.sites)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
