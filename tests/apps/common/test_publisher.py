"""The live publisher: messages reach the channel layer (real Redis) in the order handed over,
without blocking the caller; flush waits for them."""

from __future__ import annotations

import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.common import publisher


def test_messages_arrive_in_order_and_flush_waits() -> None:
    layer = get_channel_layer()
    assert layer is not None
    channel = async_to_sync(layer.new_channel)()
    group = f"test.publisher.{time.time_ns()}"
    async_to_sync(layer.group_add)(group, channel)
    try:
        t0 = time.perf_counter()
        for i in range(50):
            publisher.publish(group, {"type": "x.event", "i": i})
        handed = time.perf_counter() - t0
        assert publisher.flush(10.0)

        async def collect() -> list[int]:
            return [(await layer.receive(channel))["i"] for _ in range(50)]

        got = async_to_sync(collect)()
        assert got == list(range(50))
        assert handed < 1.0  # handing over does not wait for Redis
    finally:
        async_to_sync(layer.group_discard)(group, channel)
