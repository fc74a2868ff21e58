"""ws_latency: worker-to-browser event latency through the one websocket endpoint, with 100
subscribed clients (issue 12: p99 ≤ 100 ms), and the events per second the path delivers.

* **ours**: uvicorn (``config.asgi``, bench.settings, 2 workers) with the Redis channel layer.
  100 websocket clients open ``/ws/v1/`` with a session and subscribe to the tenant's activity
  stream (``tenants/<slug>/activity``). A producer thread writes audit events through
  ``audit_record`` in their own transactions, at a steady rate. Each event's ``time`` is stamped
  inside its transaction; a client's latency is its arrival time minus that. So the figure covers
  the commit, the publish after commit, Redis, the consumer (its dedup, filtering and numbering)
  and the websocket.
* **baseline**: the floor of the same fan-out without Django or Channels. The producer publishes the
  same ticks on a raw Redis pub/sub channel. A bare ``websockets`` server subscribed to it sends
  each tick to its 100 clients.

Figures:

* the p50 and p99 latency of every (event, client) pair at a steady 20 events/s;
* a burst (events written back to back): how many deliveries per second reach the clients.

The clients run in a process of their own, so the producer (in this process) never holds their
interpreter lock while an event arrives.

Both servers run on this machine beside the clients, so on 2 CPUs the clients' own work counts
too.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import time
from datetime import datetime
from typing import Any

from bench.common import log, write_result

NAME = "ws_latency"
CLIENTS, QUICK_CLIENTS = 100, 20
RATE = 20.0  # events per second in the steady phase
SECONDS, QUICK_SECONDS = 10.0, 3.0
BURST, QUICK_BURST = 300, 50
TARGET_P99_MS = 100.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


# --- the producers ---------------------------------------------------------------------------------
def _pace(start: float, i: int, rate: float | None) -> None:
    """Wait until event ``i`` is due (``rate`` per second from ``start``); None: at once."""
    if rate:
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)


def _audit_producer(tenant_id: int, n: int, rate: float | None) -> None:
    """Write ``n`` audit events (``rate`` per second, or back to back), each its own transaction."""
    from django.db import connection, transaction

    from apps.audit.services import audit_record
    from apps.common.context import Actor, context
    from apps.tenancy.scope import tenant_scope

    try:
        with context(actor=Actor.system("bench"), request_id="bench-ws-latency"):
            start = time.perf_counter()
            for i in range(n):
                _pace(start, i, rate)
                with tenant_scope(tenant_id), transaction.atomic():
                    audit_record(action="bench.tick", tenant=tenant_id, details={"i": i})
    finally:
        connection.close()


def _redis_producer(url: str, channel: str, n: int, rate: float | None) -> None:
    import redis

    r = redis.Redis.from_url(url)
    start = time.perf_counter()
    for i in range(n):
        _pace(start, i, rate)
        r.publish(channel, json.dumps({"seq": i + 1, "time": time.time()}))


# --- the baseline server ---------------------------------------------------------------------------
def _bare_server(url: str, channel: str, port: int, ready: Any) -> None:
    """A websockets server that relays a Redis pub/sub channel to every client (no Django)."""
    import redis.asyncio as aioredis
    from redis.exceptions import TimeoutError as RedisTimeout
    from websockets.asyncio.server import broadcast, serve

    async def main() -> None:
        clients: set[Any] = set()

        async def handler(ws: Any) -> None:
            clients.add(ws)
            try:
                await ws.wait_closed()
            finally:
                clients.discard(ws)

        async with serve(handler, "127.0.0.1", port):
            r = aioredis.Redis.from_url(url)
            pubsub = r.pubsub()
            await pubsub.subscribe(channel)
            ready.set()
            while True:
                try:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except (TimeoutError, RedisTimeout):  # idle between phases
                    continue
                if msg is not None and msg.get("type") == "message":
                    broadcast(clients, msg["data"].decode())

    asyncio.run(main())


# --- the clients -----------------------------------------------------------------------------------
async def _clients(
    url: str,
    n: int,
    headers: dict[str, str],
    subscribe: dict[str, Any] | None,
    expect: int,
    timeout: float,
    started: Any = None,  # an event (threading or multiprocessing): set once all are subscribed
) -> list[list[float]]:
    """``n`` clients; each records (arrival - event time) for ``expect`` events. Returns per client."""
    from websockets.asyncio.client import connect

    opened = 0
    all_ready = asyncio.Event()
    lat: list[list[float]] = [[] for _ in range(n)]

    async def one(i: int) -> None:
        nonlocal opened
        async with connect(url, additional_headers=headers, open_timeout=30, max_queue=None) as ws:
            if subscribe is not None:
                hello = json.loads(await ws.recv())
                assert hello["type"] == "hello", hello
                await ws.send(json.dumps(subscribe))
                ack = json.loads(await ws.recv())
                assert ack["type"] == "subscribed", ack
            opened += 1
            if opened == n:
                all_ready.set()
            deadline = time.monotonic() + timeout
            while len(lat[i]) < expect and time.monotonic() < deadline:
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=max(0.05, deadline - time.monotonic()))
                except TimeoutError:
                    break
                now = time.time()
                msg = json.loads(raw)
                stamp = msg.get("time")
                if isinstance(stamp, str):
                    stamp = datetime.fromisoformat(stamp).timestamp()
                if isinstance(stamp, float | int):
                    lat[i].append((now - float(stamp)) * 1000.0)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.wait_for(all_ready.wait(), timeout=60)
    if started is not None:
        started.set()
    await asyncio.gather(*tasks)
    return lat


def _client_process(args: tuple[Any, ...], started: Any, out: Any) -> None:
    """The clients in a process of their own (spawned): the producer's work in the parent never
    holds their GIL, so an arrival is timed when it arrives."""
    url, n, headers, subscribe, expect, timeout = args
    lat = asyncio.run(_clients(url, n, headers, subscribe, expect, timeout, started))
    out.send(lat)
    out.close()


def _phase(client_args: tuple[Any, ...], produce: Any, timeout: float) -> tuple[list[float], float, int]:
    """Clients up (in their own process), then the producer; (latencies in ms, seconds from the
    first send to the clients' end, deliveries)."""
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_client_process, args=(client_args, started, sender), daemon=True)
    proc.start()
    try:
        if not started.wait(90):
            raise RuntimeError("the websocket clients did not all connect within 90 s")
        time.sleep(0.3)  # the subscriptions' listener counts are in Redis
        t0 = time.perf_counter()
        produce()
        per_client = receiver.recv() if receiver.poll(timeout + 30) else []
        elapsed = time.perf_counter() - t0
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    lat = [x for per in per_client for x in per]
    return lat, elapsed, len(lat)


def run(ctx: Any) -> dict[str, Any]:
    from django.conf import settings

    quick = ctx.opts.quick
    n = QUICK_CLIENTS if quick else CLIENTS
    seconds = QUICK_SECONDS if quick else SECONDS
    burst = QUICK_BURST if quick else BURST
    steady_events = int(RATE * seconds)
    fx = ctx.fixture
    server = ctx.server()
    origin = f"http://127.0.0.1:{server.port}"
    headers = {"Cookie": f"sessionid={fx.session_key}", "Origin": origin}
    stream = {"op": "subscribe", "id": 1, "stream": f"tenants/{fx.tenant.slug}/activity"}
    ours_url = f"ws://127.0.0.1:{server.port}/ws/v1/"

    def audit(count: int, rate: float | None) -> Any:
        return lambda: _audit_producer(fx.tenant.pk, count, rate)

    log(f"ws_latency: {n} clients on /ws/v1/ (activity stream), {steady_events} events at {RATE:.0f}/s")
    ours = (ours_url, n, headers, stream)
    ours_lat, _e, ours_n = _phase((*ours, steady_events, seconds + 20), audit(steady_events, RATE), seconds + 20)
    log(f"ws_latency: burst of {burst} events to {n} clients")
    _l, ours_burst_s, ours_burst_n = _phase((*ours, burst, 60.0), audit(burst, None), 60)

    # The baseline: raw Redis pub/sub relayed by a bare websockets server.
    from bench.http import free_port

    port, channel = free_port(), f"bench-ws-latency-{os.getpid()}"
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(target=_bare_server, args=(settings.REDIS_URL, channel, port, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the baseline websockets server did not start")
        bare_url = f"ws://127.0.0.1:{port}/"

        bare: tuple[Any, ...] = (bare_url, n, {}, None)
        log("ws_latency: baseline (Redis pub/sub + bare websockets)")
        base_lat, _e, base_n = _phase(
            (*bare, steady_events, seconds + 20),
            lambda: _redis_producer(settings.REDIS_URL, channel, steady_events, RATE),
            seconds + 20,
        )
        _l, base_burst_s, base_burst_n = _phase(
            (*bare, burst, 60.0), lambda: _redis_producer(settings.REDIS_URL, channel, burst, None), 60
        )
    finally:
        proc.terminate()
        proc.join(10)

    p50, p99 = _percentile(ours_lat, 0.5), _percentile(ours_lat, 0.99)
    b50, b99 = _percentile(base_lat, 0.5), _percentile(base_lat, 0.99)
    expected = steady_events * n
    met = p99 <= TARGET_P99_MS and ours_n == expected
    log(f"ws_latency: ours p50 {p50:.1f} ms p99 {p99:.1f} ms ({ours_n}/{expected} delivered); "
        f"baseline p50 {b50:.1f} ms p99 {b99:.1f} ms ({base_n}/{expected})")  # fmt: skip
    return write_result(
        NAME,
        unit="ms (p99)",
        value=p99,
        baseline="Redis pub/sub relayed by a bare websockets server (no Django, no Channels), same clients",
        baseline_value=b99,
        ratio=p99 / b99 if b99 else float("nan"),
        target=f"p99 <= {TARGET_P99_MS:.0f} ms with {n} subscribed clients at {RATE:.0f} events/s, all delivered",
        command=ctx.opts.command,
        met=met,
        clients=n,
        events=steady_events,
        p50_ms=round(p50, 2),
        p99_ms=round(p99, 2),
        max_ms=round(max(ours_lat), 2) if ours_lat else None,
        delivered=ours_n,
        expected=expected,
        baseline_p50_ms=round(b50, 2),
        baseline_p99_ms=round(b99, 2),
        baseline_delivered=base_n,
        burst_events=burst,
        burst_deliveries_per_s=round(ours_burst_n / ours_burst_s, 1) if ours_burst_s else None,
        burst_delivered=ours_burst_n,
        baseline_burst_deliveries_per_s=round(base_burst_n / base_burst_s, 1) if base_burst_s else None,
        statistics_ms={"mean": round(statistics.fmean(ours_lat), 2) if ours_lat else None},
    )
