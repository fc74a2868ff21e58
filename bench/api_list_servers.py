"""api_list_servers: the RLS members list under uvicorn (ASGI, before) vs gunicorn (WSGI, now), side by side.

Three topologies run at once against the same scratch database, each with the same number of worker
processes (``Options.http_workers``), and are measured in rounds that rotate which goes first:

* ``uvicorn``: ``uvicorn config.asgi:application`` on a TCP port (what ``make run`` served before);
* ``gunicorn``: ``gunicorn config.wsgi:application`` (gthread) on a TCP port (``deploy/``: behind nginx);
* ``router``: ``make run`` as it is now: ``scripts/router.py`` on the TCP port, gunicorn behind it
  on a Unix socket (PROXY protocol), uvicorn on another for ``/ws/`` (the commands come from
  ``scripts.cohort.web_commands``, so this is what the launcher starts).

For each: the real ``GET /api/v1/tenants/bench/members/`` (owner session) and the bare DRF list of
``bench.urls`` with 8 keep-alive connections (req/s), then one connection (service latency, p99).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, log, percentile, write_result
from bench.http import Phase, free_port, request_bytes, request_once, run_phase

NAME = "api_list_servers"
ROUNDS = 6
# gthread threads per gunicorn worker: make run's default (COHORT_WEB_THREADS); override to compare.
THREADS = int(os.environ.get("COHORT_BENCH_GUNICORN_THREADS", "4"))


class Topology:
    """A set of server processes answering HTTP on ``self.port``; stopped with their groups."""

    def __init__(self, name: str, cmds: list[list[str]], port: int, cleanup: Path | None = None) -> None:
        self.name, self.cmds, self.port, self.cleanup = name, cmds, port, cleanup
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> Topology:
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="bench.settings", COHORT_DB_POOL="true")
        for cmd in self.cmds:
            self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True))
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{self.name}: {p.args[:4]} exited with status {p.returncode}")
            try:
                if asyncio.run(request_once(self.port, request_bytes("GET", "/healthz")))[0] == 200:
                    # Each worker imports Django on its own: let every one of them answer once.
                    asyncio.run(run_phase(self.port, lambda i: request_bytes("GET", "/healthz"), n=60, concurrency=8))
                    return
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name}: no answer on /healthz within {timeout:.0f} s")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # the group this benchmark started, nothing else
                p.wait(timeout=10)
        if self.cleanup is not None:
            shutil.rmtree(self.cleanup, ignore_errors=True)


def topologies(workers: int) -> list[Topology]:
    from scripts.cohort import router_command, web_commands

    py = sys.executable
    quiet = ["--no-access-log", "--log-level", "warning"]
    uv_port, gu_port, rt_port = free_port(), free_port(), free_port()
    uvicorn = [py, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(uv_port),
               "--workers", str(workers), "--lifespan", "off", *quiet]  # fmt: skip
    gunicorn = [py, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{gu_port}",
                "--workers", str(workers), "--worker-class", "gthread", "--threads", str(THREADS),
                "--keep-alive", "30", "--log-level", "warning"]  # fmt: skip
    sock_dir = Path(tempfile.mkdtemp(prefix="cohort-bench-"))
    env = {"COHORT_WEB_WORKERS": str(workers), "COHORT_WEB_THREADS": str(THREADS), "COHORT_WS_WORKERS": "1"}
    web = web_commands(env, sock_dir, access_log=False)
    routed = [web["gunicorn"], web["uvicorn"], router_command("127.0.0.1", rt_port, web["sockets"])]
    return [
        Topology("uvicorn", [uvicorn], uv_port),
        Topology("gunicorn", [gunicorn], gu_port),
        Topology("router", routed, rt_port, cleanup=sock_dir),
    ]


def _summary(ps: list[Phase]) -> dict[str, float]:
    lat = [x for p in ps for x in p.latencies]
    return {
        "rps": len(lat) / sum(p.wall for p in ps),
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "requests": len(lat),
    }


def run(ctx: Any) -> dict[str, Any]:
    opts, fx = ctx.opts, ctx.fixture
    ctx.close()  # this benchmark starts its own servers: no other one competes for the CPUs
    rls_path = f"/api/v1/tenants/{fx.tenant.slug}/members/"
    bare_path = f"/bench/bare/members/?tenant_id={fx.tenant.pk}"
    reqs = {
        "rls": request_bytes("GET", rls_path, headers={"Cookie": fx.cookie_header()}),
        "bare": request_bytes("GET", bare_path),
    }
    tops = topologies(opts.http_workers)
    try:
        for t in tops:
            t.start()
        for t in tops:
            t.wait_ready()
            log(f"{NAME}: {t.name} up on 127.0.0.1:{t.port}")
        # Every server answers the same page before anything is timed.
        want = None
        for t in tops:
            for key, raw in reqs.items():
                status, body = asyncio.run(request_once(t.port, raw))
                ids = [m["id"] for m in json.loads(body).get("results", [])] if status == 200 else []
                if not ids or (want is not None and ids != want):
                    raise RuntimeError(f"{t.name} {key}: HTTP {status} {body[:300]!r}")
                want = ids
        n, conc = opts.requests, opts.concurrency
        per_round = max(1, n // ROUNDS)
        single_n = max(10, per_round // 4)
        log(f"{NAME}: {per_round * ROUNDS} requests per endpoint and server, {conc} connections, {ROUNDS} rounds")
        for t in tops:  # warm-up
            for raw in reqs.values():
                asyncio.run(run_phase(t.port, lambda _i, r=raw: r, n=max(100, per_round // 2), concurrency=conc))
        loaded: dict[tuple[str, str], list[Phase]] = {(t.name, k): [] for t in tops for k in reqs}
        single: dict[tuple[str, str], list[Phase]] = {(t.name, k): [] for t in tops for k in reqs}
        for rnd in range(ROUNDS):
            order = tops[rnd % len(tops) :] + tops[: rnd % len(tops)]
            keys = list(reqs) if rnd % 2 == 0 else list(reversed(reqs))
            for t in order:
                for key in keys:
                    raw = reqs[key]
                    loaded[(t.name, key)].append(
                        asyncio.run(run_phase(t.port, lambda _i, r=raw: r, n=per_round, concurrency=conc))
                    )
                    single[(t.name, key)].append(
                        asyncio.run(run_phase(t.port, lambda _i, r=raw: r, n=single_n, concurrency=1))
                    )
    finally:
        for t in tops:
            t.stop()

    figures: dict[str, dict[str, float]] = {}
    for t in tops:
        rls, bare = _summary(loaded[(t.name, "rls")]), _summary(loaded[(t.name, "bare")])
        rls1, bare1 = _summary(single[(t.name, "rls")]), _summary(single[(t.name, "bare")])
        figures[t.name] = {
            "rps": round(rls["rps"], 1),
            "bare_rps": round(bare["rps"], 1),
            "ratio_to_bare": round(rls["rps"] / bare["rps"], 3),
            "p50_ms": round(rls1["p50_ms"], 2),
            "p99_ms": round(rls1["p99_ms"], 2),
            "bare_p99_ms": round(bare1["p99_ms"], 2),
            "loaded_p99_ms": round(rls["p99_ms"], 2),
            "requests": rls["requests"],
            "latency_requests": rls1["requests"],
        }
    # Per-round speed-up of each WSGI topology over uvicorn (a burst of outside load hits one round).
    for name in ("gunicorn", "router"):
        per = [
            (len(a.latencies) / a.wall) / (len(b.latencies) / b.wall)
            for a, b in zip(loaded[(name, "rls")], loaded[("uvicorn", "rls")], strict=True)
        ]
        figures[name]["speedup_median_of_rounds"] = round(statistics.median(per), 3)

    head, before = figures["router"], figures["uvicorn"]  # the headline: what `make run` serves now
    speedup = head["rps"] / before["rps"]
    met = all(
        figures[n]["rps"] / before["rps"] >= 3 and figures[n]["p99_ms"] <= 25 and figures[n]["ratio_to_bare"] >= 0.8
        for n in ("gunicorn", "router")
    )
    return write_result(
        NAME,
        unit="req/s",
        value=head["rps"],
        baseline="the same RLS members list under uvicorn (config.asgi), as `make run` served it before",
        baseline_value=before["rps"],
        ratio=speedup,
        target="gunicorn and router: >= 3x uvicorn req/s; p99 <= 25 ms one at a time; >= 0.8 x bare DRF list",
        command=opts.command,
        met=met,
        servers=figures,
        concurrency=opts.concurrency,
        server_workers=opts.http_workers,
        gunicorn_threads=THREADS,
        rounds=ROUNDS,
        endpoint=f"GET {rls_path} (owner session cookie)",
        baseline_endpoint=f"GET {bare_path}",
        quick=opts.quick,
    )
