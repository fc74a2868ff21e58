"""api_list_rls: the real tenant member list (session, tenant checks, RLS, throttle) vs a bare DRF list."""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Callable
from typing import Any

from bench.common import log, percentile, write_result
from bench.http import Phase, request_bytes, request_once, run_phase

NAME = "api_list_rls"
ROUNDS = 10


def _always(raw: bytes) -> Callable[[int], bytes]:
    return lambda _i: raw


def _queries_per_request(fx: Any, paths: dict[str, str]) -> dict[str, int]:
    """SQL statements (BEGIN/COMMIT included) one request to each path makes, counted in process."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST="127.0.0.1")
    client.cookies["sessionid"] = fx.session_key
    out = {}
    for key, path in paths.items():
        client.get(path)
        with CaptureQueriesContext(connection) as captured:
            status = client.get(path).status_code
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}")
        out[key] = len(captured.captured_queries)
    return out


def run(ctx: Any) -> dict[str, Any]:
    opts, fx, server = ctx.opts, ctx.fixture, ctx.server()
    rls_path = f"/api/v1/tenants/{fx.tenant.slug}/members/"
    bare_path = f"/bench/bare/members/?tenant_id={fx.tenant.pk}"
    rls_req = request_bytes("GET", rls_path, headers={"Cookie": fx.cookie_header()})
    bare_req = request_bytes("GET", bare_path)

    # Both answer the same page (50 members, newest first) before anything is timed.
    rls_body = json.loads(asyncio.run(request_once(server.port, rls_req))[1])
    bare_body = json.loads(asyncio.run(request_once(server.port, bare_req))[1])
    ids = [m["id"] for m in rls_body.get("results", [])]
    if not ids or ids != [m["id"] for m in bare_body.get("results", [])]:
        raise RuntimeError(f"the two endpoints disagree: {str(rls_body)[:300]} / {str(bare_body)[:300]}")

    queries = _queries_per_request(fx, {"rls": rls_path, "bare": bare_path})
    n, conc = opts.requests, opts.concurrency
    per_round = max(1, n // ROUNDS)
    log(f"{NAME}: {per_round * ROUNDS} requests per endpoint, {conc} connections, {ROUNDS} alternating rounds")
    for req in (rls_req, bare_req):  # warm-up: both workers' pools, caches, JIT-less Python paths
        asyncio.run(run_phase(server.port, _always(req), n=max(100, per_round // 2), concurrency=conc))
    phases: dict[str, list[Phase]] = {"rls": [], "bare": []}
    for rnd in range(ROUNDS):
        order = [("rls", rls_req), ("bare", bare_req)]
        for key, req in order if rnd % 2 == 0 else reversed(order):
            phases[key].append(asyncio.run(run_phase(server.port, _always(req), n=per_round, concurrency=conc)))

    def summary(ps: list[Phase]) -> dict[str, float]:
        lat = [x for p in ps for x in p.latencies]
        return {
            "rps": len(lat) / sum(p.wall for p in ps),
            "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000,
            "requests": len(lat),
        }

    rls, bare = summary(phases["rls"]), summary(phases["bare"])
    # Service latency without queueing: one connection, one request at a time (a closed loop of 8
    # connections on 2 CPUs measures mostly the queue: mean latency = 8 / throughput).
    single: dict[str, list[Phase]] = {"rls": [], "bare": []}
    for rnd in range(ROUNDS):
        order = [("rls", rls_req), ("bare", bare_req)]
        for key, req in order if rnd % 2 == 0 else reversed(order):
            single[key].append(
                asyncio.run(run_phase(server.port, _always(req), n=max(10, per_round // 4), concurrency=1))
            )
    rls1, bare1 = summary(single["rls"]), summary(single["bare"])
    ratio = rls["rps"] / bare["rps"]
    # Per-round ratios: a burst of outside load hits one round, not the whole figure.
    round_ratios = [
        (len(a.latencies) / a.wall) / (len(b.latencies) / b.wall)
        for a, b in zip(phases["rls"], phases["bare"], strict=True)
    ]
    met = ratio >= 0.8 and rls1["p99_ms"] <= 50
    return write_result(
        NAME,
        unit="req/s",
        value=rls["rps"],
        baseline="bare DRF ListAPIView of the same model/serializer/pagination: no auth, no tenant checks, "
        "no throttle (RLS GUC set directly)",
        baseline_value=bare["rps"],
        ratio=ratio,
        target="ratio >= 0.8; RLS endpoint p99 <= 50 ms (one request at a time)",
        command=opts.command,
        met=met,
        p50_ms=round(rls1["p50_ms"], 2),
        p99_ms=round(rls1["p99_ms"], 2),
        baseline_p50_ms=round(bare1["p50_ms"], 2),
        baseline_p99_ms=round(bare1["p99_ms"], 2),
        latency_requests=rls1["requests"],
        loaded_p50_ms=round(rls["p50_ms"], 2),
        loaded_p99_ms=round(rls["p99_ms"], 2),
        loaded_baseline_p50_ms=round(bare["p50_ms"], 2),
        loaded_baseline_p99_ms=round(bare["p99_ms"], 2),
        ratio_median_of_rounds=round(statistics.median(round_ratios), 3),
        requests_per_endpoint=rls["requests"],
        sql_per_request=queries["rls"],
        baseline_sql_per_request=queries["bare"],
        concurrency=conc,
        server_workers=opts.http_workers,
        rows_per_page=len(ids),
        endpoint=f"GET {rls_path} (owner session cookie)",
        baseline_endpoint=f"GET {bare_path}",
        quick=opts.quick,
    )
