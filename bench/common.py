"""Shared benchmark plumbing: the scratch database, results files, percentiles, machine facts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOC_PATH = ROOT / "docs" / "benchmarks.md"
RESULT_KEYS = ("name", "unit", "value", "baseline", "baseline_value", "ratio", "target", "command")


@dataclass
class Options:
    """What bench.run was asked for; each benchmark reads its sizes from here."""

    quick: bool
    command: str
    audit_events: int
    requests: int
    concurrency: int
    write_iterations: int
    http_workers: int = 2
    notes: list[str] = field(default_factory=list)


def with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def write_result(
    name: str,
    *,
    unit: str,
    value: float,
    baseline: str,
    baseline_value: float,
    ratio: float,
    target: str,
    command: str,
    met: bool,
    **extra: Any,
) -> dict[str, Any]:
    """Write bench/results/<name>.json (the required keys first, then extra figures)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "name": name,
        "unit": unit,
        "value": round(value, 3),
        "baseline": baseline,
        "baseline_value": round(baseline_value, 3),
        "ratio": round(ratio, 3),
        "target": target,
        "command": command,
        "target_met": met,
        **extra,
    }
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    return data


def machine() -> dict[str, str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // (1024 * 1024)} GiB RAM"
                break
    except OSError:
        pass
    pg = ""
    try:
        from django.db import connections

        with connections["default"].cursor() as cur:
            cur.execute("SHOW server_version")
            pg = "PostgreSQL " + str(cur.fetchone()[0]).split()[0]
    except Exception:  # not fatal: only used for the write-up
        pass
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {
        "cpu": cpu,
        "nproc": str(os.cpu_count() or "?"),
        "memory": mem,
        "python": platform.python_version(),
        "postgres": pg,
        "kernel": platform.release(),
        "load_at_start": load,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": _git_rev(),
    }


def _git_rev() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)
