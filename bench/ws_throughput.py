"""ws_throughput: events per second through the channel layer (issue 12), fanned out to 100
subscribed channels, against raw Redis pub/sub doing the same fan-out.

* **ours**: the channel layer the platform is configured with (``settings.CHANNEL_LAYERS``:
  ``apps.common.channel_layer.FanoutChannelLayer`` and its capacity), under a prefix of its own.
  Two receiver processes (as two server workers) each open 50 channels (``new_channel``), add them
  to one group and run one task per channel that awaits ``receive`` in a loop, as a consumer does.
  A producer (this process, one event loop) calls ``group_send`` for each event, one after the
  other, as ``apps.common.publisher``'s sender does.
* **baseline**: the floor of the same fan-out without Channels: the producer ``PUBLISH``es each
  event on a Redis pub/sub channel; each receiver process has one subscription, decodes each
  message once and puts it on 50 local queues, each read by its task.

The producer sends as fast as the layer takes the events. An event counts when every channel got
it; the figure is events per second from the first send to the last receipt (each event reaching
all 100 channels), so it is bounded by the slower of sending and receiving. Latency (receipt minus
send) is also reported. Rounds alternate which side goes first; medians.

Everything (Redis, both receivers, the producer) shares this machine's CPUs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import multiprocessing
import os
import statistics
import time
import uuid
from typing import Any

from bench.common import log, percentile, write_result

NAME = "ws_throughput"
CHANNELS, QUICK_CHANNELS = 100, 20
PROCESSES = 2
EVENTS, QUICK_EVENTS = 2000, 200
ROUNDS, QUICK_ROUNDS = 3, 1
TARGET_RATIO = 0.5
# What the product needs, for the write-up (docs/benchmarks.md): a 10-site federation round emits
# about 42 federation events (the round's opening with its 10 selections in one burst, each site's
# admission, training and submission, the close) and as many audit rows on the activity stream.
ROUND_EVENTS_10_SITES = 42


# --- receivers (spawned processes) -----------------------------------------------------------------
IDLE_S = 2.0  # a receiver stops this long after its last message (the layer dropped the rest)


async def _until_done_or_idle(tasks: list[asyncio.Task[None]], last: Any, timeout: float) -> None:
    """Wait for every task, or until nothing arrived for :data:`IDLE_S` once something did."""
    deadline = time.monotonic() + timeout
    pending = set(tasks)
    while pending and time.monotonic() < deadline:
        _done, pending = await asyncio.wait(pending, timeout=0.25)
        if last() and time.time() - last() > IDLE_S:
            return


def _layer(backend: str, config: dict[str, Any]) -> Any:
    from django.utils.module_loading import import_string

    return import_string(backend)(**config)


async def _channels_receiver(
    backend: str, config: dict[str, Any], group: str, n: int, expect: int, timeout: float, ready: Any
) -> dict[str, Any]:
    layer = _layer(backend, config)
    names = [await layer.new_channel() for _ in range(n)]
    for name in names:
        await layer.group_add(group, name)
    lat: list[float] = []
    counts = [0] * n
    last = 0.0

    async def one(k: int) -> None:
        nonlocal last
        while counts[k] < expect:
            msg = await layer.receive(names[k])
            now = time.time()
            counts[k] += 1
            last = now
            lat.append(now - msg["t"])

    ready.set()
    tasks = [asyncio.create_task(one(k)) for k in range(n)]
    await _until_done_or_idle(tasks, lambda: last, timeout)
    for t in tasks:
        t.cancel()
    for name in names:
        await layer.group_discard(group, name)
    return {"received": sum(counts), "last": last, "lat": lat}


async def _pubsub_receiver(url: str, channel: str, n: int, expect: int, timeout: float, ready: Any) -> dict[str, Any]:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    pubsub = r.pubsub()
    await pubsub.subscribe(channel)
    queues: list[asyncio.Queue[dict[str, Any]]] = [asyncio.Queue() for _ in range(n)]
    lat: list[float] = []
    counts = [0] * n
    last = 0.0

    async def relay() -> None:
        async for raw in pubsub.listen():
            if raw.get("type") != "message":
                continue
            msg = json.loads(raw["data"])
            for q in queues:
                q.put_nowait(msg)

    async def one(k: int) -> None:
        nonlocal last
        while counts[k] < expect:
            msg = await queues[k].get()
            now = time.time()
            counts[k] += 1
            last = now
            lat.append(now - msg["t"])

    relay_task = asyncio.create_task(relay())
    ready.set()
    tasks = [asyncio.create_task(one(k)) for k in range(n)]
    await _until_done_or_idle(tasks, lambda: last, timeout)
    for t in [*tasks, relay_task]:
        t.cancel()
    await pubsub.aclose()
    await r.aclose()
    return {"received": sum(counts), "last": last, "lat": lat}


def _receiver_process(kind: str, args: tuple[Any, ...], ready: Any, out: Any) -> None:
    fn = _pubsub_receiver if kind == "pubsub" else _channels_receiver
    out.send(asyncio.run(fn(*args, ready)))  # type: ignore[operator]
    out.close()


# --- producers -------------------------------------------------------------------------------------
async def _channels_producer(backend: str, config: dict[str, Any], group: str, events: int) -> float:
    layer = _layer(backend, config)
    start = time.time()
    for i in range(events):
        await layer.group_send(group, {"type": "bench.tick", "i": i, "t": time.time()})
    close = getattr(layer, "close_pools", None)  # the core layer's; the pub/sub layer has none
    if close is not None:
        await close()
    return start


async def _pubsub_producer(url: str, channel: str, events: int) -> float:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    start = time.time()
    for i in range(events):
        await r.publish(channel, json.dumps({"i": i, "t": time.time()}))
    await r.aclose()
    return start


def _side(kind: str, receiver_args: Any, produce: Any, events: int, channels: int, timeout: float) -> dict[str, Any]:
    """Receivers up in their processes, then the producer; the side's figures."""
    ctx = multiprocessing.get_context("spawn")
    per = channels // PROCESSES
    procs, pipes, readies = [], [], []
    for _ in range(PROCESSES):
        ready = ctx.Event()
        rx, tx = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_receiver_process, args=(kind, (*receiver_args, per, events, timeout), ready, tx), daemon=True
        )
        proc.start()
        procs.append(proc)
        pipes.append(rx)
        readies.append(ready)
    results: list[dict[str, Any]] = []
    try:
        for ready in readies:
            if not ready.wait(60):
                raise RuntimeError(f"ws_throughput: a {kind} receiver did not start within 60 s")
        time.sleep(0.3)  # every task is waiting in receive
        start = asyncio.run(produce())
        sent = time.time()
        for rx in pipes:
            if rx.poll(timeout + 30):
                results.append(rx.recv())
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    received = sum(r["received"] for r in results)
    last = max((r["last"] for r in results), default=0.0)
    lat = [x * 1000.0 for r in results for x in r["lat"]]
    elapsed = max(last, sent) - start
    complete = received == events * channels
    return {
        "events_per_s": events / elapsed if complete and elapsed > 0 else received / channels / elapsed,
        "deliveries_per_s": received / elapsed if elapsed > 0 else 0.0,
        "send_events_per_s": events / (sent - start) if sent > start else 0.0,
        "received": received,
        "expected": events * channels,
        "p50_ms": percentile(lat, 50) if lat else float("nan"),
        "p99_ms": percentile(lat, 99) if lat else float("nan"),
    }


PUBSUB_LAYER = "channels_redis.pubsub.RedisPubSubChannelLayer"


def measure(*, backend: str, config: dict[str, Any], redis_url: str, channels: int, events: int, rounds: int,
            timeout: float = 60.0, pubsub_layer: bool = True) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Each side ``rounds`` times, the order rotating; per side the list of its rounds. Sides:
    ``channels`` (``backend``, the configured layer), ``pubsub`` (the raw floor) and, for the
    write-up, ``pubsub_layer`` (channels_redis' pub/sub layer, one ``PUBLISH`` per group send)."""
    kinds = ["channels", "pubsub"] + (["pubsub_layer"] if pubsub_layer and backend != PUBSUB_LAYER else [])
    sides: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(rounds):
        for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
            tag = f"bench-ws-throughput-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            if kind == "pubsub":
                args: tuple[Any, ...] = (redis_url, tag)
                produce = functools.partial(_pubsub_producer, redis_url, tag, events)
            else:
                be = backend if kind == "channels" else PUBSUB_LAYER
                cfg = {**config, "prefix": tag}
                args = (be, cfg, "bench-fanout")
                produce = functools.partial(_channels_producer, be, cfg, "bench-fanout", events)
            res = _side(kind, args, produce, events, channels, timeout)
            sides[kind].append(res)
            log(f"ws_throughput: round {r + 1} {kind}: {res['events_per_s']:,.0f} events/s to {channels} channels "
                f"(sent at {res['send_events_per_s']:,.0f}/s; {res['received']}/{res['expected']} received, "
                f"p99 {res['p99_ms']:.1f} ms)")  # fmt: skip
    return sides


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def _summary(rows: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if not rows:
        return None
    keys = ("events_per_s", "deliveries_per_s", "send_events_per_s", "p50_ms", "p99_ms")
    return {k: round(_median(rows, k), 2) for k in keys} | {"lost": sum(r["expected"] - r["received"] for r in rows)}


def run(ctx: Any) -> dict[str, Any]:
    from django.conf import settings

    quick = ctx.opts.quick
    channels = QUICK_CHANNELS if quick else CHANNELS
    events = QUICK_EVENTS if quick else EVENTS
    rounds = QUICK_ROUNDS if quick else ROUNDS
    layer = settings.CHANNEL_LAYERS["default"]
    backend, config = layer["BACKEND"], dict(layer.get("CONFIG", {}))
    log(f"ws_throughput: {backend}, {events} events to {channels} channels in {PROCESSES} processes, {rounds} rounds")
    sides = measure(backend=backend, config=config, redis_url=settings.REDIS_URL, channels=channels, events=events,
                    rounds=rounds)  # fmt: skip
    ours, base = sides["channels"], sides["pubsub"]
    value, floor = _median(ours, "events_per_s"), _median(base, "events_per_s")
    ratios = [o["events_per_s"] / b["events_per_s"] for o, b in zip(ours, base, strict=True) if b["events_per_s"]]
    ratio = float(statistics.median(ratios)) if ratios else float("nan")
    lost = sum(o["expected"] - o["received"] for o in ours)
    met = ratio >= TARGET_RATIO and lost == 0
    return write_result(
        NAME,
        unit="events/s",
        value=value,
        baseline=f"raw Redis pub/sub: one subscription per receiver process, fanned out to local queues "
        f"({channels} in all), same producer loop",
        baseline_value=floor,
        ratio=ratio,
        target=f">= {TARGET_RATIO}x the pub/sub floor, every event to all {channels} channels",
        command=ctx.opts.command,
        met=met,
        quick=quick,
        backend=backend,
        channels=channels,
        processes=PROCESSES,
        events=events,
        rounds=rounds,
        ratio_median_of_rounds=round(ratio, 3),
        deliveries_per_s=round(_median(ours, "deliveries_per_s"), 1),
        baseline_deliveries_per_s=round(_median(base, "deliveries_per_s"), 1),
        send_events_per_s=round(_median(ours, "send_events_per_s"), 1),
        baseline_send_events_per_s=round(_median(base, "send_events_per_s"), 1),
        p50_ms=round(_median(ours, "p50_ms"), 2),
        p99_ms=round(_median(ours, "p99_ms"), 2),
        baseline_p50_ms=round(_median(base, "p50_ms"), 2),
        baseline_p99_ms=round(_median(base, "p99_ms"), 2),
        lost=lost,
        baseline_lost=sum(b["expected"] - b["received"] for b in base),
        round_10_sites_events=ROUND_EVENTS_10_SITES,
        pubsub_layer=_summary(sides.get("pubsub_layer")),
        rounds_detail=sides,
    )
