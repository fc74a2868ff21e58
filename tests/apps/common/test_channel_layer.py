"""The platform's channel layer (``apps.common.channel_layer``) on the real Redis of the settings:
one subscription per loop for a group, the same decoded message to each local channel, bounded
inboxes that drop the oldest, cleanup when a consumer's receive is cancelled, recovery from a
killed pub/sub connection, database numbers kept apart; through a proxy that fails: an outage that
neither undoes an unsubscribe nor fails a group_add, a silent connection replaced; channels released
when a consumer ends mid-message, and swept when nobody receives on them."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
import redis
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings

from apps.common.channel_layer import FanoutChannelLayer, ReleasesChannel


def _url(db: int | None = None) -> str:
    url: str = settings.REDIS_URL
    if db is None:
        return url
    base = url.rsplit("/", 1)[0] if url.rsplit("/", 1)[-1].isdigit() else url.rstrip("/")
    return f"{base}/{db}"


def _layer(**config: Any) -> FanoutChannelLayer:
    config.setdefault("hosts", [_url()])
    config.setdefault("prefix", f"t{uuid.uuid4().hex[:10]}")
    return FanoutChannelLayer(**config)


def _numsub(key: str) -> int:
    client = redis.Redis.from_url(_url())
    try:
        return int(dict(client.pubsub_numsub(key))[key.encode()])
    finally:
        client.close()


class _OtherLoop:
    """A second event loop in a thread: its layer state is another process's, as far as the
    layer can tell (its own channels, groups and pub/sub connection)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def other() -> Iterator[_OtherLoop]:
    loop = _OtherLoop()
    yield loop
    loop.close()


async def _receive(layer: FanoutChannelLayer, channel: str, timeout: float = 3.0) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), timeout)


async def _send_until_received(
    layer: FanoutChannelLayer, group: str, channel: str, timeout: float = 10.0
) -> dict[str, Any]:
    """group_send until ``channel`` gets one (a fresh subscription takes a moment to be in place).
    One receive waits throughout: cancelling a receive ends its channel, as a consumer's end does."""
    end = time.monotonic() + timeout
    waiting = asyncio.ensure_future(layer.receive(channel))
    while not waiting.done():
        assert time.monotonic() < end, "nothing arrived"
        await layer.group_send(group, {"type": "t.ping"})
        await asyncio.wait([waiting], timeout=0.2)
    message: dict[str, Any] = waiting.result()
    inbox = layer.local().inboxes[channel].queue
    while not inbox.empty():  # the other pings
        inbox.get_nowait()
    return message


async def _nothing(layer: FanoutChannelLayer, channel: str, wait: float = 0.3) -> None:
    """Nothing arrives on ``channel`` within ``wait`` (looked at without a receive to cancel)."""
    await asyncio.sleep(wait)
    assert layer.local().inboxes[channel].queue.empty()


async def test_a_group_message_is_decoded_once_and_each_local_channel_gets_the_same_object(other: _OtherLoop) -> None:
    layer = _layer()
    a, b, outsider = await layer.new_channel(), await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g1", a)
    await layer.group_add("g1", b)
    await _send_until_received(layer, "g1", a)
    await _receive(layer, b)
    local = layer.local()
    before = local.received
    assert _numsub(layer.group_key("g1")) == 1  # one subscription for both channels

    sender = _layer(prefix=layer.prefix.rsplit(".db", 1)[0])  # same names, another loop: another process
    other.run(sender.group_send("g1", {"type": "t.event", "n": 7, "blob": b"\x00\x01"}))
    got_a, got_b = await _receive(layer, a), await _receive(layer, b)
    assert got_a == {"type": "t.event", "n": 7, "blob": b"\x00\x01"}
    assert got_a is got_b
    assert local.received == before + 1
    await _nothing(layer, outsider, 0.3)
    other.run(sender.flush())
    await layer.flush()


async def test_send_reaches_one_channel_and_discard_unsubscribes_the_last_member() -> None:
    layer = _layer()
    a, b = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g2", a)
    await layer.group_add("g2", b)
    await _send_until_received(layer, "g2", a)
    await _receive(layer, b)
    await layer.send(b, {"type": "t.direct"})
    assert (await _receive(layer, b))["type"] == "t.direct"
    await _nothing(layer, a, 0.3)

    await layer.group_discard("g2", a)
    assert _numsub(layer.group_key("g2")) == 1  # b is still in it
    await layer.group_send("g2", {"type": "t.after"})
    assert (await _receive(layer, b))["type"] == "t.after"
    await _nothing(layer, a, 0.3)
    await layer.group_discard("g2", b)
    assert _numsub(layer.group_key("g2")) == 0
    await layer.group_discard("g2", b)  # again: nothing to do, no error
    await layer.flush()


async def test_a_full_inbox_drops_its_oldest_so_the_next_message_shows_the_gap() -> None:
    layer = _layer(capacity=3)
    slow, fast = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g3", slow)
    await layer.group_add("g3", fast)
    await _send_until_received(layer, "g3", slow)
    await asyncio.sleep(0.2)  # the last pings are in
    local = layer.local()
    for channel in (slow, fast):
        while not local.inboxes[channel].queue.empty():
            local.inboxes[channel].queue.get_nowait()
    dropped = local.dropped
    fast_got = []
    for i in range(5):  # the fast channel reads each as it comes; the slow one reads nothing
        await layer.group_send("g3", {"type": "t.seq", "i": i})
        fast_got.append((await _receive(layer, fast))["i"])
    assert fast_got == [0, 1, 2, 3, 4]
    got = [(await _receive(layer, slow))["i"] for _ in range(3)]
    assert got == [2, 3, 4]  # 0 and 1 were dropped: the oldest go
    assert local.dropped == dropped + 2
    await layer.flush()


async def test_a_cancelled_receive_forgets_the_channel_and_its_groups() -> None:
    layer = _layer()
    a = await layer.new_channel()
    await layer.group_add("g4", a)
    await _send_until_received(layer, "g4", a)
    waiting = asyncio.ensure_future(layer.receive(a))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    for _ in range(50):
        if _numsub(layer.group_key("g4")) == 0 and _numsub(layer.channel_key(a)) == 0:
            break
        await asyncio.sleep(0.05)
    assert _numsub(layer.group_key("g4")) == 0
    assert _numsub(layer.channel_key(a)) == 0
    with pytest.raises(RuntimeError, match="not a channel"):
        await layer.receive(a)
    with pytest.raises(RuntimeError, match="not a channel"):
        await layer.group_add("g4", a)
    await layer.flush()


async def test_messages_flow_again_after_the_pubsub_connection_is_killed() -> None:
    layer = _layer()
    a = await layer.new_channel()
    await layer.group_add("g5", a)
    await _send_until_received(layer, "g5", a)
    # The server closes this layer's pub/sub connection only (other runs may share the server).
    host, port = layer.local().pubsub.connection._writer.get_extra_info("sockname")[:2]
    admin = redis.Redis.from_url(_url())
    try:
        assert admin.client_kill(f"{host}:{port}")
    finally:
        admin.close()
    # Messages published while it is down are lost (at most once); once redis-py has reconnected and
    # subscribed again, they arrive.
    got = await _send_until_received(layer, "g5", a, timeout=15)
    assert got["type"] == "t.ping"
    await layer.flush()


async def test_layers_on_different_databases_do_not_hear_each_other(other: _OtherLoop) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    here, there = _layer(hosts=[_url(13)], prefix=prefix), _layer(hosts=[_url(14)], prefix=prefix)
    a = await here.new_channel()
    await here.group_add("g6", a)
    await _send_until_received(here, "g6", a)
    other.run(there.group_send("g6", {"type": "t.other-db"}))
    await _nothing(here, a, 0.5)
    other.run(there.flush())
    await here.flush()


def test_the_layer_refuses_a_config_it_cannot_serve() -> None:
    with pytest.raises(ValueError, match="list of one Redis URL"):
        FanoutChannelLayer(hosts="redis://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="list of one Redis URL"):
        FanoutChannelLayer(hosts=["redis://a:6379/0", "redis://b:6379/0"])
    with pytest.raises(ValueError, match="redis:// URL"):
        FanoutChannelLayer(hosts=["http://127.0.0.1:6379"])
    with pytest.raises(ValueError, match="capacity"):
        FanoutChannelLayer(hosts=[_url()], capacity=0)


def test_a_loop_closes_its_layer_state_with_it() -> None:
    layer = _layer()
    loop = asyncio.new_event_loop()

    async def use() -> str:
        channel = await layer.new_channel()
        await layer.group_add("g7", channel)
        return channel

    channel = loop.run_until_complete(use())
    assert _numsub(layer.channel_key(channel)) == 1
    loop.close()
    assert loop not in layer._loops
    for _ in range(50):
        if _numsub(layer.channel_key(channel)) == 0:
            break
        time.sleep(0.05)
    assert _numsub(layer.channel_key(channel)) == 0


class _Proxy:
    """A TCP proxy to the settings' Redis, in the test's loop, that can fail the ways networks do:
    ``down()`` closes every connection and refuses new ones; ``blackhole()`` keeps the connections
    open but stops passing their bytes either way (a NAT that forgot them); new ones pass."""

    def __init__(self) -> None:
        parsed = urlparse(_url())
        self.target = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self.db = parsed.path.strip("/") or "0"
        self.refusing = False
        self.conns: list[dict[str, Any]] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/{self.db}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        conn: dict[str, Any] = {"passing": True, "writers": (writer, up_writer)}
        self.conns.append(conn)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if conn["passing"]:
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def down(self) -> None:
        self.refusing = True
        for conn in self.conns:
            for w in conn["writers"]:
                w.close()
        self.conns.clear()

    def up(self) -> None:
        self.refusing = False

    def blackhole(self) -> None:
        for conn in self.conns:
            conn["passing"] = False

    async def close(self) -> None:
        self.down()
        if self.server is not None:
            self.server.close()


def _publish_direct(layer: FanoutChannelLayer, group: str, message: dict[str, Any]) -> None:
    """Publish to the group past the proxy (the Redis server itself), as another process would."""
    client = redis.Redis.from_url(_url())
    try:
        client.publish(layer.group_key(group), layer.encode(message))
    finally:
        client.close()


async def _until(check: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "the condition never held"
        await asyncio.sleep(0.05)


async def _receive_published(layer: FanoutChannelLayer, group: str, channel: str, timeout: float = 15.0) -> None:
    """Publish past the proxy until ``channel`` gets one (the layer is reconnecting meanwhile)."""
    end = time.monotonic() + timeout
    waiting = asyncio.ensure_future(layer.receive(channel))
    while not waiting.done():
        assert time.monotonic() < end, "nothing arrived"
        _publish_direct(layer, group, {"type": "t.ping"})
        await asyncio.wait([waiting], timeout=0.2)


async def test_an_outage_neither_undoes_an_unsubscribe_nor_fails_a_group_add() -> None:
    proxy = _Proxy()
    layer = _layer(hosts=[await proxy.start()])
    a, b = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g8", a)
    await _receive_published(layer, "g8", a)
    assert _numsub(layer.group_key("g8")) == 1

    proxy.down()  # Redis is unreachable: the leave and the join happen meanwhile
    await asyncio.sleep(0.3)
    await layer.group_discard("g8", a)
    await asyncio.wait_for(layer.group_add("g9", b), 5)  # returns; it is subscribed once Redis is back
    proxy.up()

    await _receive_published(layer, "g9", b)
    await _until(lambda: _numsub(layer.group_key("g8")) == 0)  # redis-py had resubscribed it
    assert _numsub(layer.group_key("g9")) == 1
    await layer.flush()
    await proxy.close()


async def test_a_connection_that_goes_silent_is_pinged_and_replaced() -> None:
    proxy = _Proxy()
    layer = _layer(hosts=[await proxy.start()])
    a = await layer.new_channel()
    await layer.group_add("g10", a)
    await _receive_published(layer, "g10", a)
    local = layer.local()
    local.HEALTH_S, local.DEAD_S = 0.5, 1.0
    proxy.blackhole()  # open but mute: nothing tells the layer
    started = time.monotonic()
    await _receive_published(layer, "g10", a, timeout=20)
    assert local.rebuilt == 1
    assert time.monotonic() - started < 10
    await layer.flush()
    await proxy.close()


def test_channels_nobody_receives_on_are_swept() -> None:
    layer = _layer()

    async def run() -> None:
        local_channel = await layer.new_channel()
        busy = await layer.new_channel()
        local = layer.local()
        waiting = asyncio.ensure_future(layer.receive(busy))
        await asyncio.sleep(0.05)
        assert local.sweep(time.monotonic() + local.ORPHAN_S / 2) == 0  # not idle long enough
        assert local.sweep(time.monotonic() + local.ORPHAN_S + 1) == 1  # only the one nobody waits on
        assert local_channel not in local.inboxes
        assert busy in local.inboxes
        await _until(lambda: _numsub(layer.channel_key(local_channel)) == 0)
        waiting.cancel()
        await layer.flush()

    asyncio.run(run())


class _Stops(AsyncWebsocketConsumer):
    """Joins a group and ends while handling its message (no receive of its channel pending)."""

    async def connect(self) -> None:
        await self.channel_layer.group_add("g11", self.channel_name)
        await self.accept()
        await self.send(text_data=self.channel_name)

    async def t_stop(self, message: dict[str, Any]) -> None:
        raise StopConsumer()


class _Releases(ReleasesChannel, _Stops):
    pass


@pytest.mark.parametrize("consumer", [_Stops, _Releases])
async def test_a_consumer_that_ends_mid_message_releases_its_channel(consumer: type, settings: Any) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "apps.common.channel_layer.FanoutChannelLayer",
                    "CONFIG": {"hosts": [_url()], "prefix": f"t{uuid.uuid4().hex[:10]}"}}
    }  # fmt: skip
    layer = get_channel_layer()
    client = WebsocketCommunicator(consumer.as_asgi(), "/ws/")
    assert (await client.connect())[0]
    channel = await client.receive_from()
    local = layer.local()
    assert channel in local.inboxes
    await layer.group_send("g11", {"type": "t.stop"})
    await client.wait(5)  # the consumer has ended
    if consumer is _Releases:
        assert channel not in local.inboxes
        await _until(lambda: _numsub(layer.group_key("g11")) == 0 and _numsub(layer.channel_key(channel)) == 0)
    else:  # Channels' own consumer leaves it behind: the sweep is what frees it
        assert channel in local.inboxes
        assert local.sweep(time.monotonic() + local.ORPHAN_S + 1) == 1
        await _until(lambda: _numsub(layer.group_key("g11")) == 0)
    await layer.flush()


def test_closing_a_running_loop_keeps_its_layer_state() -> None:
    layer = _layer()

    async def run() -> None:
        channel = await layer.new_channel()
        loop = asyncio.get_running_loop()
        with pytest.raises(RuntimeError, match="running"):
            loop.close()
        assert loop in layer._loops
        assert channel in layer.local().inboxes
        await layer.flush()

    asyncio.run(run())
