"""The channel layer the platform serves with: Redis pub/sub, one subscription per process for each
group its sockets joined, fanned out in the process (``settings.CHANNEL_LAYERS``).

Why not ``channels_redis``' layers (``docs/websocket.md``, ``docs/benchmarks.md``: ``ws_throughput``,
``ws_latency``):

* ``RedisChannelLayer`` (the core layer) stores a copy of every group message in a Redis list per
  channel and each socket pops its own, one Redis round trip per event per socket, so an event to
  100 sockets is 100 pops; past the layer's ``capacity`` it drops silently. On this machine it moved
  230 events/s to 100 sockets and lost over half of a burst.
* ``RedisPubSubChannelLayer`` sends each event once per process, but queues the raw bytes for every
  socket and deserialises them per socket (100 decodes of one event), and its queues are unbounded.

This layer publishes each message once (``PUBLISH``), each process that has a socket in the group
receives it once on its one pub/sub connection, decodes it once and hands **the same message
object** to every local channel in the group. Consumers must treat layer messages as read-only
(Channels' own consumers and ours do); ``apps.common.socket`` relies on the shared object to encode
an event's frame once per process.

Delivery is at most once, as with every Channels layer, and the live protocol is built for that:
events are persisted first and carry sequence numbers, so a socket fills a gap from the database
(``apps.common.socket``). What can drop a message here:

* a channel whose inbox holds ``capacity`` undelivered messages (a socket that stopped reading)
  loses its **oldest** one per new message, so the next message it reads reveals the gap at once;
  drops are counted (:attr:`FanoutLoopLayer.dropped`) and logged;
* messages published while a process's pub/sub connection is down (redis-py reconnects and
  subscribes again; the reader backs off with jitter between failed tries);
* messages to a group published before a process subscribed to it (as with any layer: a subscriber
  reads what it missed from the database after joining).

State is per event loop (a layer object serves every loop of the process, like Channels' layers):
channel names, group memberships and the pub/sub connection belong to the loop that made them. A
loop's state is closed with the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import types
import uuid
from typing import Any

import msgpack
from channels.layers import BaseChannelLayer
from redis import asyncio as aioredis

logger = logging.getLogger(__name__)

DEFAULT_CAPACITY = 1000
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0


def _hosts(hosts: Any) -> str:
    if not hosts:
        return "redis://127.0.0.1:6379/0"
    if isinstance(hosts, str | bytes) or len(hosts) != 1:
        raise ValueError("CONFIG hosts must be a list of one Redis URL (this layer does not shard).")
    host = hosts[0]
    if isinstance(host, dict):
        host = host.get("address")
    if not isinstance(host, str) or not host.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"CONFIG hosts[0] must be a redis:// URL, not {host!r}.")
    return host


def _database(url: str) -> int:
    from urllib.parse import parse_qs, urlparse

    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return int(parse_qs(parsed.query).get("db", ["0"])[0])
    path = parsed.path.strip("/")
    return int(path) if path.isdigit() else 0


class FanoutChannelLayer(BaseChannelLayer):  # type: ignore[misc]
    """See the module docstring. ``CONFIG``: ``hosts`` (a list of one Redis URL), ``prefix`` (Redis
    channel names start with it), ``capacity`` (undelivered messages per channel before the oldest
    is dropped)."""

    extensions = ["groups", "flush"]

    def __init__(self, hosts: Any = None, prefix: str = "cohort", capacity: int = DEFAULT_CAPACITY, **_: Any) -> None:
        if int(capacity) < 1:
            raise ValueError("CONFIG capacity must be at least 1.")
        super().__init__(capacity=int(capacity))
        self.url = _hosts(hosts)
        # Pub/sub channels are server-wide, not per database: the names carry the URL's database
        # number, so deployments (and test runs) on one server's different databases stay apart.
        self.prefix = f"{prefix}.db{_database(self.url)}"
        self._loops: dict[asyncio.AbstractEventLoop, FanoutLoopLayer] = {}
        self._group_keys: dict[str, str] = {}

    def local(self) -> FanoutLoopLayer:
        """This event loop's state (made on first use; closed when the loop closes)."""
        loop = asyncio.get_running_loop()
        layer = self._loops.get(loop)
        if layer is None:
            layer = self._loops[loop] = FanoutLoopLayer(self)
            self._close_with(loop)
        return layer

    def _close_with(self, loop: asyncio.AbstractEventLoop) -> None:
        original = loop.close

        def close(this: asyncio.AbstractEventLoop) -> None:
            if loop.is_running():  # refused by the loop itself; its state stays in use
                original()
                return
            layer = self._loops.pop(loop, None)
            if layer is not None:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(layer.flush())
            this.close = original  # type: ignore[method-assign]
            original()

        loop.close = types.MethodType(close, loop)  # type: ignore[method-assign]

    # --- the Channels layer API (each on this loop's state) ------------------------------------------
    async def new_channel(self, prefix: str = "specific.") -> str:
        return await self.local().new_channel(prefix)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        self.require_valid_channel_name(channel)
        await self.local().publish(self.channel_key(channel), message)

    async def receive(self, channel: str) -> dict[str, Any]:
        # No name check: only a channel ``new_channel`` made (so a valid name) can be received on.
        return await self.local().receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self.local().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        await self.local().group_discard(group, channel)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        key = self._group_keys.get(group)
        if key is None:  # checked once per name (the hot path sends to the same groups again and again)
            self.require_valid_group_name(group)
            if len(self._group_keys) >= 4096:
                self._group_keys.clear()
            key = self._group_keys[group] = self.group_key(group)
        await self.local().publish(key, message)

    async def discard_channel(self, channel: str) -> None:
        """Release a channel ``new_channel`` made: its inbox, groups and subscriptions (consumers
        call this when they end; see :class:`ReleasesChannel`). Unknown channels are ignored."""
        layer = self._loops.get(asyncio.get_running_loop())
        if layer is not None:
            layer.forget(channel)

    async def flush(self) -> None:
        """Close this loop's connections and forget its channels and groups."""
        layer = self._loops.pop(asyncio.get_running_loop(), None)
        if layer is not None:
            await layer.flush()

    # --- names ----------------------------------------------------------------------------------------
    def channel_key(self, channel: str) -> str:
        return f"{self.prefix}:c:{channel}"

    def group_key(self, group: str) -> str:
        return f"{self.prefix}:g:{group}"

    @staticmethod
    def encode(message: dict[str, Any]) -> bytes:
        return bytes(msgpack.packb(message, use_bin_type=True))

    @staticmethod
    def decode(data: bytes) -> dict[str, Any]:
        message = msgpack.unpackb(data, raw=False)
        if not isinstance(message, dict):
            raise ValueError("a channel-layer message must be a mapping")
        return message


class ReleasesChannel:
    """A consumer mixin: when the consumer ends, however it ends, its channel is released.

    Channels' consumers release nothing themselves; this layer frees a channel when its pending
    receive is cancelled, but a consumer that ends while it handles a message has none pending."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
        finally:
            layer, channel = getattr(self, "channel_layer", None), getattr(self, "channel_name", None)
            discard = getattr(layer, "discard_channel", None)
            if channel and discard is not None:
                with contextlib.suppress(Exception):
                    await discard(channel)


class _Inbox:
    """One channel's undelivered messages: a bounded queue that drops its oldest when full."""

    __slots__ = ("groups", "idle_since", "queue", "waiting")

    def __init__(self, capacity: int) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=capacity)
        self.groups: set[str] = set()  # the Redis keys of the groups it joined
        self.waiting = 0  # receives now waiting on it
        self.idle_since = time.monotonic()  # when the last receive ended (or the channel was made)


class FanoutLoopLayer:
    """One event loop's channels, groups and Redis connections.

    Only the reader task and callers holding ``_lock`` touch the pub/sub connection, one at a time:
    redis-py's pub/sub object is not safe for a command (which may reconnect and read the
    handshake) while another coroutine reads. The reader holds the lock for one short read
    (``POLL_S``), so a ``group_add`` waits at most that long. What the connection is subscribed to
    is reconciled against the members every ``RECONCILE_S`` and after any failure (redis-py
    resubscribes, on reconnect, to what it was subscribed to, including what was unsubscribed while
    it was down). A connection quiet for ``HEALTH_S`` is pinged, and one that does not answer within
    ``DEAD_S`` is replaced (a NAT or firewall that drops a connection without closing it)."""

    POLL_S = 0.05
    RECONCILE_S = 5.0
    HEALTH_S = 15.0
    DEAD_S = 10.0
    ORPHAN_S = 600.0  # a channel nobody received on for this long is released (see ``sweep``)

    def __init__(self, parent: FanoutChannelLayer) -> None:
        self.parent = parent
        self.redis = aioredis.Redis.from_url(parent.url, socket_keepalive=True)
        self.pubsub = self.redis.pubsub()
        self.inboxes: dict[str, _Inbox] = {}
        self.members: dict[str, set[str]] = {}  # Redis key -> local channels (a group's, or one channel's)
        self.subscribed: set[str] = set()  # keys this connection was told to subscribe to
        self.dropped = 0
        self.received = 0
        self.rebuilt = 0
        self._lock = asyncio.Lock()  # the pub/sub connection: one user at a time
        self._dirty = False  # subscriptions may differ from the members: reconcile soon
        self._reader: asyncio.Task[None] | None = None
        self._cleanup: set[asyncio.Task[None]] = set()
        self._warned_at = 0.0
        self._last_seen = time.monotonic()  # the connection last said something
        self._ping_sent: float | None = None
        self._reconciled = self._swept = time.monotonic()

    # --- channels and groups ----------------------------------------------------------------------------
    async def new_channel(self, prefix: str) -> str:
        channel = f"{self.parent.prefix}.{prefix}{uuid.uuid4().hex}"
        self.inboxes[channel] = _Inbox(self.parent.capacity)
        await self._join(self.parent.channel_key(channel), channel)  # so ``send`` reaches it
        return channel

    async def receive(self, channel: str) -> dict[str, Any]:
        inbox = self.inboxes.get(channel)
        if inbox is None:
            raise RuntimeError(f"{channel!r} is not a channel of this process's loop (make it with new_channel).")
        inbox.waiting += 1
        try:
            return await inbox.queue.get()
        except asyncio.CancelledError:
            # Channels cancels a consumer's receive when the consumer ends: the channel goes with it.
            self.forget(channel)
            raise
        finally:
            inbox.waiting -= 1
            inbox.idle_since = time.monotonic()

    async def group_add(self, group: str, channel: str) -> None:
        inbox = self.inboxes.get(channel)
        if inbox is None:
            raise RuntimeError(f"group_add: {channel!r} is not a channel of this process's loop.")
        key = self.parent.group_key(group)
        inbox.groups.add(key)
        await self._join(key, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        key = self.parent.group_key(group)
        inbox = self.inboxes.get(channel)
        if inbox is not None:
            inbox.groups.discard(key)
        await self._leave(key, channel)

    async def publish(self, key: str, message: dict[str, Any]) -> None:
        await self.redis.publish(key, self.parent.encode(message))

    async def _join(self, key: str, channel: str) -> None:
        self.members.setdefault(key, set()).add(channel)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read())
        if key in self.subscribed:
            return
        async with self._lock:
            if key not in self.subscribed and channel in self.members.get(key, ()):
                try:
                    await self.pubsub.subscribe(key)
                    self.subscribed.add(key)
                except Exception:  # Redis is away: the reader subscribes when it is back
                    self._dirty = True
                    logger.warning("channel layer: could not subscribe to %s now; will retry", key, exc_info=True)

    async def _leave(self, key: str, channel: str) -> None:
        members = self.members.get(key)
        if members is None:
            return
        members.discard(channel)
        if members:
            return
        del self.members[key]
        async with self._lock:
            if key in self.subscribed and key not in self.members:
                self.subscribed.discard(key)
                try:
                    await self.pubsub.unsubscribe(key)
                except Exception:  # a reconnect would subscribe it again: reconcile then
                    self._dirty = True

    def forget(self, channel: str) -> bool:
        """Release ``channel``: its inbox, its groups and its own subscription (soon, in the
        background). False when it was not a channel of this loop (or already released)."""
        inbox = self.inboxes.pop(channel, None)
        if inbox is None:
            return False
        for key in (*inbox.groups, self.parent.channel_key(channel)):
            task = asyncio.ensure_future(self._leave(key, channel))
            self._cleanup.add(task)
            task.add_done_callback(self._cleanup.discard)
        return True

    def sweep(self, now: float | None = None) -> int:
        """Release channels no receive waited on for ``ORPHAN_S``: a consumer that ended while it
        was handling a message (so no receive was cancelled) and did not release its channel."""
        now = time.monotonic() if now is None else now
        orphans = [c for c, i in self.inboxes.items() if i.waiting == 0 and now - i.idle_since > self.ORPHAN_S]
        for channel in orphans:
            self.forget(channel)
        if orphans:
            logger.info("channel layer: released %d channels nobody received on", len(orphans))
        return len(orphans)

    # --- the one reader -------------------------------------------------------------------------------
    async def _read(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            try:
                await self._housekeeping()
                if not self.subscribed:
                    await asyncio.sleep(self.POLL_S)
                    continue
                async with self._lock:
                    raw = await self.pubsub.get_message(ignore_subscribe_messages=False, timeout=self.POLL_S)
                backoff = BACKOFF_MIN_S
            except asyncio.CancelledError:
                raise
            except Exception:
                self._dirty = True
                logger.warning("channel layer: pub/sub read failed; trying again in %.1f s", backoff, exc_info=True)
                await asyncio.sleep(backoff * (0.5 + random.random()))  # jitter: not every process at once
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if raw is None:
                continue
            self._last_seen, self._ping_sent = time.monotonic(), None
            if raw.get("type") == "message":
                self.deliver(raw["channel"], raw["data"])

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._swept > min(60.0, self.ORPHAN_S / 2):
            self._swept = now
            self.sweep(now)
        if self._ping_sent is not None and now - self._ping_sent > self.DEAD_S:
            await self._rebuild()
            return
        if self.subscribed and self._ping_sent is None and now - self._last_seen > self.HEALTH_S:
            async with self._lock:
                self._ping_sent = now
                await self.pubsub.ping(message="cohort-layer")
        if self._dirty or now - self._reconciled > self.RECONCILE_S:
            await self._reconcile()

    async def _reconcile(self) -> None:
        """Subscribe to what the members need and nothing else (on this connection's own view)."""
        async with self._lock:
            self._reconciled = time.monotonic()
            want = set(self.members)
            pending = {_name(k) for k in self.pubsub.pending_unsubscribe_channels}
            have = {_name(k) for k in self.pubsub.channels} - pending
            if want - have:
                await self.pubsub.subscribe(*sorted(want - have))
            if have - want:
                await self.pubsub.unsubscribe(*sorted(have - want))
            self.subscribed = want
            self._dirty = False

    async def _rebuild(self) -> None:
        """Replace a connection that stopped answering with a new one, subscribed afresh."""
        async with self._lock:
            logger.warning("channel layer: the pub/sub connection did not answer for %.0f s; replacing it",
                           self.DEAD_S)  # fmt: skip
            old, self.pubsub = self.pubsub, self.redis.pubsub()
            self.subscribed, self._dirty, self._ping_sent = set(), True, None
            self._last_seen = time.monotonic()
            self.rebuilt += 1
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(old.aclose(), 2.0)

    def deliver(self, key: bytes | str, data: bytes) -> int:
        """Hand one published message to this loop's channels on ``key``: decoded once, the same
        object to each. Returns how many channels got it."""
        name = _name(key)
        channels = self.members.get(name)
        if not channels:
            return 0
        try:
            message = self.parent.decode(data)
        except Exception:
            logger.warning("channel layer: dropped an undecodable message on %s", name)
            return 0
        self.received += 1
        for channel in channels:
            inbox = self.inboxes.get(channel)
            if inbox is None:
                continue
            queue = inbox.queue
            if queue.full():  # a socket that stopped reading: drop its oldest, so the gap shows next
                queue.get_nowait()
                self._dropped(channel)
            queue.put_nowait(message)
        return len(channels)

    def _dropped(self, channel: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._warned_at > 10:
            self._warned_at = now
            logger.warning("channel layer: %s is %d messages behind; dropping its oldest (%d dropped so far)",
                           channel, self.parent.capacity, self.dropped)  # fmt: skip

    async def flush(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        for task in list(self._cleanup):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.redis.aclose(close_connection_pool=True)
        self.inboxes.clear()
        self.members.clear()
        self.subscribed.clear()


def _name(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key
