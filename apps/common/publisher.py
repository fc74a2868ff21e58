"""Live events to the channel layer without blocking the caller: one sender thread per process.

``async_to_sync(layer.group_send)`` from synchronous code starts an event loop, and with it a new
Redis connection, for every event: milliseconds each, on the path of every site task and request
that emits one. :func:`publish` instead hands the message to a process-wide thread that runs one
event loop (so the channel layer's connection pool lives across events) and sends messages one at
a time in the order they were handed over, so a stream's events reach the layer in sequence order.

Delivery stays best effort, as before: events are persisted first and clients resync by sequence
number over REST when they see a gap. :func:`flush` waits for what was handed over (tests, and at
process exit, so a command's last events are not dropped).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

logger = logging.getLogger(__name__)


class _Sender:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_until_complete(self._drain(queue))

        threading.Thread(target=run, name="cohort-live-publisher", daemon=True).start()
        ready.wait(5)
        self._loop, self._queue, self._pid, self._pending = loop, queue, os.getpid(), 0

    async def _drain(self, queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        while True:
            group, message = await queue.get()
            try:
                layer = get_channel_layer()
                if layer is not None:
                    await layer.group_send(group, message)
            except Exception:  # best effort: the event is persisted; clients resync by sequence
                logger.warning("could not publish a live event to %s", group, exc_info=True)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def send(self, group: str, message: dict[str, Any]) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: its own thread and loop
                self._start()
            self._pending += 1
            loop, queue = self._loop, self._queue
        assert loop is not None
        assert queue is not None
        loop.call_soon_threadsafe(queue.put_nowait, (group, message))

    def flush(self, timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        with self._idle:
            if self._pid != os.getpid():
                return True
            while self._pending > 0:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True


_sender = _Sender()


def publish(group: str, message: dict[str, Any]) -> None:
    """Send ``message`` to the channel group ``group`` soon, in order with earlier calls. The
    message names its group (``"group"``): a socket subscribed to several streams
    (``apps.common.socket``) routes it by that."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {**message, "group": group}
    if isinstance(layer, InMemoryChannelLayer):
        # In-process only (tests): its queues belong to the consumers' loop and are not thread-safe,
        # so it is sent from here, as before.
        try:
            async_to_sync(layer.group_send)(group, message)
        except Exception:
            logger.warning("could not publish a live event to %s", group, exc_info=True)
        return
    _sender.send(group, message)


def flush(timeout: float = 5.0) -> bool:
    """Wait until everything handed to :func:`publish` was sent (True) or ``timeout`` passed."""
    return _sender.flush(timeout)


atexit.register(flush, 2.0)
