"""The live publisher: messages reach the channel layer (real Redis) in the order handed over,
without blocking the caller; flush waits for them."""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from apps.common import publisher


async def test_messages_arrive_in_order_and_flush_waits() -> None:
    layer = get_channel_layer()
    assert layer is not None
    # The layer's channels and groups belong to the loop that made them: one loop for all of it.
    channel = await layer.new_channel()
    group = f"test.publisher.{time.time_ns()}"
    await layer.group_add(group, channel)
    try:
        # The subscription is in place once a probe comes back (one receive waits throughout:
        # cancelling it would end the channel, as a consumer's end does).
        probe = asyncio.ensure_future(layer.receive(channel))
        for _ in range(50):
            await layer.group_send(group, {"type": "x.probe"})
            if (await asyncio.wait([probe], timeout=0.2))[0]:
                break
        assert probe.done()
        t0 = time.perf_counter()
        for i in range(50):
            publisher.publish(group, {"type": "x.event", "i": i})
        handed = time.perf_counter() - t0
        assert await sync_to_async(publisher.flush, thread_sensitive=False)(10.0)
        got: list[int] = []
        while len(got) < 50:  # in order, after any probes still on their way
            message = await asyncio.wait_for(layer.receive(channel), 5)
            if message["type"] == "x.event":
                got.append(message["i"])
        assert got == list(range(50))
        assert handed < 1.0  # handing over does not wait for Redis
    finally:
        await layer.group_discard(group, channel)
