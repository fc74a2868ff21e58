"""Flower 1.42's FedAvg aggregation timed on the ``fl_aggregate`` benchmark's updates.

Runs only in Flower's own virtual environment (``bench/flower/.venv``; its pins conflict with the
platform's): ``bench/flower/aggregate_bench.sh CONFIG.json`` creates it when needed and runs this.
``bench/fl_aggregate.py`` calls that script and reads the JSON it prints as its last line.

CONFIG names the safetensors files the platform side aggregates (one per participant, deltas),
their example counts, the global state, the platform's result and the number of repeats. The
files are read with NumPy alone (8-byte header length, JSON header, raw little-endian data), into
arrays in sorted-name order, before anything is timed. Then:

* ``flwr.server.strategy.aggregate.aggregate(results)``, ``results`` being
  ``[(ndarrays, num_examples), ...]``: Flower's weighted average (what legacy ``FedAvg`` runs with
  ``inplace=False``). Only the call is timed. Its first call is also the memory probe: the growth
  of peak RSS (``VmHWM``, reset just before through ``/proc/self/clear_refs``) over the RSS at
  that moment, every update already loaded.
* ``flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords(records, "num-examples")``:
  what Flower 1.42's Message-API ``FedAvg.aggregate_train`` calls, over one ``RecordDict`` per
  participant (an ``ArrayRecord`` of the arrays, built untimed, and a ``MetricRecord`` with
  ``num-examples``). Its time includes ``Array.numpy()`` (``np.load`` of each array's bytes),
  which that path always does.

Both results plus the global state are compared with the platform's result (max abs difference).
"""

from __future__ import annotations

import json
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

import flwr
import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.server.strategy.aggregate import aggregate
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as an owned NumPy array, in sorted-name order."""
    data = path.read_bytes()
    (size,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + size])
    header.pop("__metadata__", None)
    out: dict[str, np.ndarray] = {}
    for name in sorted(header):
        entry = header[name]
        begin, end = entry["data_offsets"]
        dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
        flat = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=8 + size + begin)
        out[name] = flat.reshape(entry["shape"]).astype(dtype.newbyteorder("="), copy=True)
    return out


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset the peak RSS (``VmHWM``) to the current RSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def max_abs_diff(names: list[str], result: list[np.ndarray], base: dict[str, np.ndarray], ours: dict) -> float:
    """Largest |(global + Flower's mean delta) - ours| over every element."""
    worst = 0.0
    for name, mean in zip(names, result, strict=True):
        value = (base[name] + mean).astype(ours[name].dtype)
        worst = max(worst, float(np.max(np.abs(value - ours[name]))) if value.size else 0.0)
    return worst


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[0]).read_text())
    repeats = int(config["repeats"])
    weights = [int(n) for n in config["weights"]]
    updates = [read_safetensors(Path(p)) for p in config["files"]]
    names = list(updates[0])
    results = [([u[name] for name in names], n) for u, n in zip(updates, weights, strict=True)]
    update_bytes = sum(a.nbytes for a in results[0][0])

    was_reset = reset_peak()
    rss_before, peak_before = _status_kib("VmRSS") * 1024, _status_kib("VmHWM") * 1024
    times: list[float] = []
    out: list[np.ndarray] = []
    peak_after = peak_before
    for _ in range(repeats):
        del out  # the previous result is not part of the next call's memory
        t0 = time.perf_counter()
        out = aggregate(results)
        times.append(time.perf_counter() - t0)
        if len(times) == 1:
            peak_after = _status_kib("VmHWM") * 1024

    records = [
        RecordDict(
            {
                "arrays": ArrayRecord({name: Array(a) for name, a in zip(names, arrays, strict=True)}),
                "metrics": MetricRecord({"num-examples": n}),
            }
        )
        for arrays, n in results
    ]
    record_times: list[float] = []
    record_out: Any = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        record_out = aggregate_arrayrecords(records, "num-examples")
        record_times.append(time.perf_counter() - t0)

    figures: dict[str, Any] = {
        "flwr": flwr.__version__,
        "numpy": np.__version__,
        "participants": len(results),
        "elements": sum(a.size for a in results[0][0]),
        "update_bytes": update_bytes,
        "aggregate_seconds": times,
        "aggregate_seconds_median": statistics.median(times),
        "aggregate_arrayrecords_seconds": record_times,
        "aggregate_arrayrecords_seconds_median": statistics.median(record_times),
        "peak_reset": was_reset,
        "rss_before_aggregate": rss_before,
        "peak_before_aggregate": peak_before,
        "peak_after_first_aggregate": peak_after,
        # None: the peak could not be reset and the call never rose above it (its peak is unknown).
        "aggregate_extra_peak_bytes": peak_after - rss_before if (was_reset or peak_after > peak_before) else None,
    }
    if config.get("ours") and config.get("global"):
        ours = read_safetensors(Path(config["ours"]))
        base = read_safetensors(Path(config["global"]))
        figures["max_abs_diff_aggregate"] = max_abs_diff(names, out, base, ours)
        record_arrays = [record_out[name].numpy() for name in names]
        figures["max_abs_diff_arrayrecords"] = max_abs_diff(names, record_arrays, base, ours)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
