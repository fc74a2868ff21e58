"""The one websocket endpoint, ``/ws/v1/``: a client opens one socket and subscribes to streams
(``docs/websocket.md``).

Streams are named like the REST paths: ``tenants/<slug>/jobs/<id>``, ``tenants/<slug>/federations/<id>``,
``tenants/<slug>/datasets/<id>`` (ingest and grants) and ``tenants/<slug>/activity`` (the tenant's
audit feed). Each domain app defines a :class:`StreamHandler` for its kind in its ``consumers``
module, listed in ``settings.COHORT_LIVE_STREAMS``; this module knows none of them.

* **Who.** A browser's session (behind the ``Origin`` check) or an integrator's API key
  (``Authorization: Bearer``), as ``apps.accounts.websocket`` resolves it. An unauthenticated
  socket is accepted and closed at once with 4401, so a client reads a close code, not an HTTP 403.
* **Every subscribe** checks the tenant, the membership (or the key's tenant and scopes) and the
  role permission of the stream, then the object in the tenant's scope. An unknown tenant, a
  non-member, another tenant's object and a missing one all answer ``not_found`` alike; a role
  without the permission or a suspended tenant ``forbidden``. Refusals are audited
  (``access.denied``, method ``WEBSOCKET``) as the per-stream endpoints do.
* **Every event** is ``{"type", "stream", "seq", "prev", "time", "payload"}``: ``seq`` is the
  stream's own persisted number, ``prev`` the number of the event this socket sent before it on
  that stream (for the first: the ``after`` asked for, or the ``subscribed`` number). A client
  whose last seen number is not ``prev`` has missed something and resyncs (REST
  ``…/events/?after=``, or subscribe again with ``after``). The server itself fills what the
  channel layer dropped from the database when it notices (a later event, or the periodic look at
  each stream's latest number), so a gap reaches the client only when it is too far behind
  (:data:`REPLAY_MAX`): the subscription then ends with ``reason: "resync"``, never skipping.
* **Resume.** ``subscribe`` with ``after: N`` replays the persisted events after N, then goes live
  without duplicates (events at or below the cursor are dropped).
* **Revocation.** A revoked API key, an ended session (logout, password change) or a deactivated
  user closes the socket (4403 / 4401); an ended membership, a role change or a suspended tenant
  ends the tenant's subscriptions the person may no longer read, a revoked grant the subscriptions
  that depended on it (``unsubscribed`` with ``reason: "forbidden"``). Each has a fast path (a control message) and a
  backstop: every :func:`recheck_seconds` (4 s) the socket looks at its principal and at every
  subscription again, so a lost control message costs at most that long.
* **Limits.** 64 subscriptions per socket; after 20 refused subscribes (each audited in the tenant
  it named) the socket closes with 1008. Its database reads run in the thread pool.
* **Cost per event.** A live event that needs no fill takes no thread hop (Channels' per-message
  ``close_old_connections`` is skipped for channel-layer messages: this consumer reads only through
  :data:`_db`, which closes stale connections in the thread that reads), and its JSON is encoded
  once per process and stream (:class:`_FrameCache`); each socket splices in its own ``prev``. The
  periodic recheck reads everything it needs in one thread hop.
* Event messages on the channel layer name their group (``apps.common.publisher``); one without a
  group is dropped (the database fill brings it to the subscriptions it belongs to).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from apps.audit.live import control_group
from apps.common.channel_layer import ReleasesChannel
from apps.common.stream import (
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    _audit_refusal,
    _check_member,
    _key_state,
)
from apps.tenancy.scope import tenant_scope

logger = logging.getLogger(__name__)

# The socket's database reads run in the thread pool, not in the one thread that
# ``database_sync_to_async`` shares by default: one busy socket must not stall every other's.
_db = functools.partial(database_sync_to_async, thread_sensitive=False)

PROTOCOL = 1
REPLAY_MAX = 2000  # events replayed (or filled in) at once; beyond it the client resyncs over REST
MAX_SUBSCRIPTIONS = 64
MAX_REFUSALS = 20  # refused subscribes per socket before it closes (each is audited in the target tenant)
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
STREAM_RE = re.compile(r"^tenants/(?P<slug>[a-z0-9][a-z0-9-]{0,62})/(?P<kind>[a-z]+)(?:/(?P<id>[1-9][0-9]{0,17}))?$")


def recheck_seconds() -> float:
    """How often an open socket looks at its principal and subscriptions again (the backstop of the
    control messages the channel layer may drop)."""
    return float(getattr(settings, "COHORT_WS_RECHECK_SECONDS", 4.0))


def user_group(user_id: int) -> str:
    """The group of every socket a person opened with a session (``user.control``: logout)."""
    return f"u{int(user_id)}.control"


@dataclass(frozen=True)
class Event:
    """One persisted event of a stream, as the protocol sends it."""

    seq: int
    type: str
    time: str
    payload: dict[str, Any]


class StreamHandler:
    """One subscription's view of a stream. The sync methods run in a thread, in the tenant's
    scope (``tenant_scope``); a handler may remember what it read on ``self``."""

    kind: ClassVar[str] = ""  # the stream name's kind: "jobs", "federations", ...
    permission: ClassVar[str] = ""  # the role permission (apps.tenancy.policy) it needs
    has_object: ClassVar[bool] = True  # tenants/<slug>/<kind>/<id> (else tenants/<slug>/<kind>)

    def __init__(self, tenant_id: int, object_id: int | None) -> None:
        self.tenant_id = tenant_id
        self.object_id = object_id or 0  # 0: a stream without an object (``has_object`` False)

    # --- sync, in the tenant's scope -------------------------------------------------------------
    def authorize(self) -> bool:
        """Does the stream's object exist for this tenant (and may it see it)? False: not_found."""
        raise NotImplementedError

    def still_allowed(self) -> bool:
        """The periodic (and grant-change) look again; by default the subscribe's own check."""
        return self.authorize()

    def groups(self) -> list[str]:
        """The channel groups whose messages carry this stream's events or access changes."""
        raise NotImplementedError

    def between(self, after: int, before: int | None, limit: int) -> list[Event]:
        """The persisted events this subscriber sees, ``after < seq < before``, oldest first."""
        raise NotImplementedError

    def latest(self) -> int:
        """The stream's latest persisted number (hidden events included)."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Read again what decides visibility (called before filling, when :meth:`needs_refresh`)."""

    # --- live (no database) -----------------------------------------------------------------------
    def from_message(self, message: dict[str, Any]) -> Event | None:
        """The event a channel-layer message carries (None: not an event of this stream)."""
        raise NotImplementedError

    def visible(self, event: Event) -> Event | None:
        """What this subscriber may see of ``event`` (None: hidden, though its number counts)."""
        return event

    def needs_refresh(self, event: Event) -> bool:
        return False

    def on_open(self) -> None:
        """Sync, outside any scope, after the subscription joined its groups (listener counts)."""

    def on_close(self) -> None:
        """Sync, outside any scope, when the subscription ends."""


_HANDLERS: dict[str, type[StreamHandler]] = {}


def handlers() -> dict[str, type[StreamHandler]]:
    """The subscribable kinds: ``settings.COHORT_LIVE_STREAMS`` (dotted paths of each app's
    handler), loaded once."""
    if not _HANDLERS:
        from django.utils.module_loading import import_string

        for path in settings.COHORT_LIVE_STREAMS:
            handler = import_string(path)
            if not handler.kind or not handler.permission:
                raise ValueError(f"{path} names no kind or permission")
            _HANDLERS[handler.kind] = handler
    return _HANDLERS


def handler_kinds() -> list[str]:
    return sorted(handlers())


def frame_parts(stream: str, event: Event) -> tuple[str, str]:
    """An event's frame without its ``prev``: ``head + json.dumps(prev) + tail`` is exactly
    ``json.dumps({"type", "stream", "seq", "prev", "time", "payload"})`` (what ``send_json`` wrote)."""
    dumps = json.dumps
    head = f'{{"type": {dumps(event.type)}, "stream": {dumps(stream)}, "seq": {dumps(event.seq)}, "prev": '
    return head, f', "time": {dumps(event.time)}, "payload": {dumps(event.payload)}}}'


class _FrameCache:
    """The frames of live events already encoded in this process. The channel layer hands one
    message object to every socket of the process in its group (``apps.common.channel_layer``
    decodes each message once); each subscription builds its :class:`Event` from it
    (``from_message``: a function of the message, no database), so for a subscription that shows
    the event unchanged (``visible`` returned it as is) everything but ``prev`` is the same on every
    socket subscribed to that stream. Keyed by the message's identity and the stream; each entry
    holds its message, so an ``id`` is never reused while its entry lives. Events changed by
    ``visible`` (a filtered federation event), fills from the database and layers that copy the
    message per channel (the in-memory one) are encoded per socket, as before."""

    SIZE = 256

    def __init__(self) -> None:
        self._frames: dict[tuple[int, str], tuple[dict[str, Any], str, str]] = {}
        self.hits = self.misses = 0

    def parts(self, message: dict[str, Any], stream: str, event: Event) -> tuple[str, str]:
        key = (id(message), stream)
        hit = self._frames.get(key)
        if hit is not None and hit[0] is message:
            self.hits += 1
            return hit[1], hit[2]
        self.misses += 1
        head, tail = frame_parts(stream, event)
        if len(self._frames) >= self.SIZE:
            del self._frames[next(iter(self._frames))]  # the oldest
        self._frames[key] = (message, head, tail)
        return head, tail


_frames = _FrameCache()


@dataclass
class Subscription:
    stream: str
    slug: str
    handler: StreamHandler
    groups: tuple[str, ...]
    cursor: int = 0  # the highest number dealt with (sent or hidden)
    sent: int = 0  # ``prev`` of the next event: the last one sent, or where the client said it was
    opened: bool = False  # its on_open ran (so on_close must)


class SubscribeRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class LiveConsumer(ReleasesChannel, AsyncJsonWebsocketConsumer):
    """``/ws/v1/``: see the module docstring."""

    user: Any = None
    session_key: str | None = None
    subs: dict[str, Subscription]
    _lock: asyncio.Lock
    _watch: asyncio.Task[None] | None = None
    _closing = False
    refusals = 0

    # --- the socket ------------------------------------------------------------------------------
    async def connect(self) -> None:
        self.subs, self._lock = {}, asyncio.Lock()
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        if self._is_key():
            if await _db(_key_state)(user.prefix) != "live":
                await self.close(code=CLOSE_UNAUTHENTICATED)
                return
        else:
            session = self.scope.get("session")
            self.session_key = getattr(session, "session_key", None)
            await self.channel_layer.group_add(user_group(user.pk), self.channel_name)
        every = recheck_seconds()
        await self.send_json({"type": "hello", "protocol": PROTOCOL, "recheck_seconds": every,
                              "kinds": handler_kinds(), "principal": self._principal_label()})  # fmt: skip
        self._watch = asyncio.create_task(self._watch_loop(every))

    def _is_key(self) -> bool:
        return getattr(self.user, "key_id", None) is not None

    def _principal_label(self) -> dict[str, Any]:
        if self._is_key():
            return {"type": "api_key", "prefix": self.user.prefix}
        return {"type": "user", "id": self.user.pk}

    async def disconnect(self, code: int) -> None:
        self._closing = True
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
        for name in list(getattr(self, "subs", {})):
            await self._drop(name)
        if self.user is not None and not self._is_key():
            await self.channel_layer.group_discard(user_group(self.user.pk), self.channel_name)

    async def _close(self, code: int) -> None:
        if not self._closing:
            self._closing = True
            await self.close(code=code)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels closes the stale database connections of its shared sync thread before every
        handler: a thread hop per message, i.e. per event per subscribed socket. This consumer
        never reads through that thread (its reads go through :data:`_db`, which closes stale
        connections in the thread that runs them), so channel-layer messages skip it; the
        socket's own messages (``websocket.connect``, ``.receive``, ``.disconnect``) keep it."""
        if message["type"].startswith("websocket."):
            await super().dispatch(message)
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # --- client messages -------------------------------------------------------------------------
    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if self.user is None or self._closing:
            return
        if not isinstance(content, dict):
            await self.send_json({"type": "error", "code": "bad_request", "message": "Send a JSON object."})
            return
        op, ref = content.get("op"), content.get("id")
        if ref is not None and not isinstance(ref, str | int):
            ref = None
        try:
            if op == "subscribe":
                await self._subscribe(content, ref)
            elif op == "unsubscribe":
                await self._unsubscribe(content, ref)
            elif op == "ping":
                await self.send_json({"type": "pong", "id": ref})
            else:
                raise SubscribeRefused("bad_request", "op must be one of subscribe, unsubscribe, ping.")
        except SubscribeRefused as exc:
            error = {"type": "error", "id": ref, "code": exc.code, "message": exc.message}
            if isinstance(content.get("stream"), str):
                error["stream"] = content["stream"][:200]
            await self.send_json(error)
            if exc.code in ("not_found", "forbidden"):
                self.refusals += 1
                if self.refusals >= MAX_REFUSALS:  # probing other tenants: each refusal is audited there
                    await self._close(CLOSE_POLICY)

    async def decode_json(self, text_data: str) -> Any:
        try:
            return await super().decode_json(text_data)
        except ValueError:
            return None

    def _parse(self, content: dict[str, Any]) -> tuple[str, str, type[StreamHandler], int | None, int | None]:
        stream = content.get("stream")
        if not isinstance(stream, str):
            raise SubscribeRefused("bad_request", "stream must be a string such as tenants/<slug>/jobs/<id>.")
        m = STREAM_RE.match(stream)
        handler = handlers().get(m["kind"]) if m else None
        if m is None or handler is None or handler.has_object != (m["id"] is not None):
            kinds = ", ".join(f"tenants/<slug>/{k}" + ("/<id>" if handlers()[k].has_object else "")
                              for k in handler_kinds())  # fmt: skip
            raise SubscribeRefused("bad_request", f"Unknown stream {stream[:120]!r}: one of {kinds}.")
        after = content.get("after")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
            raise SubscribeRefused("bad_request", "after must be a non-negative integer (the last seq seen).")
        return stream, m["slug"], handler, (int(m["id"]) if m["id"] else None), after

    async def _subscribe(self, content: dict[str, Any], ref: Any) -> None:
        stream, slug, handler_cls, object_id, after = self._parse(content)
        if stream in self.subs:
            raise SubscribeRefused("already_subscribed", "This socket is subscribed to that stream already.")
        if len(self.subs) >= MAX_SUBSCRIPTIONS:
            raise SubscribeRefused("too_many_subscriptions", f"At most {MAX_SUBSCRIPTIONS} streams per socket.")
        handler, latest = await _db(self._authorize)(stream, slug, handler_cls, object_id)
        groups = (*handler.groups(), control_group(handler.tenant_id))
        async with self._lock:
            for group in groups:
                await self.channel_layer.group_add(group, self.channel_name)
            sub = Subscription(stream=stream, slug=slug, handler=handler, groups=groups)
            self.subs[stream] = sub
            # Without ``after``: live from now on. With it: what was missed, then live. ``prev`` of
            # the first event is where the client stands, so a client checks every event alike.
            sub.cursor = sub.sent = latest if after is None else min(after, latest)
            await self.send_json({"type": "subscribed", "id": ref, "stream": stream, "seq": latest})
            try:
                await _db(handler.on_open)()
                sub.opened = True
            except Exception:  # listener bookkeeping: the stream still works (writers publish on doubt)
                logger.warning("on_open of %s failed", stream, exc_info=True)
            await self._fill(sub, None)

    def _authorize(
        self, stream: str, slug: str, handler_cls: type[StreamHandler], object_id: int | None
    ) -> tuple[StreamHandler, int]:
        from django.db import transaction

        path = f"/ws/v1/ {stream}"  # the audit's route: the endpoint and the stream asked for
        tenant_id, code, reason, url_tenant = _check_member(self.user, slug, handler_cls.permission)
        if tenant_id is None:
            with transaction.atomic():
                _audit_refusal(self.user, url_tenant, reason, handler_cls.permission, path)
            if code == CLOSE_FORBIDDEN:
                raise SubscribeRefused("forbidden", "Your role or key may not read this stream.")
            raise SubscribeRefused("not_found", "No such stream.")
        handler = handler_cls(tenant_id, object_id)
        with tenant_scope(tenant_id):
            found = handler.authorize()
            latest = handler.latest() if found else 0
        if not found:
            with transaction.atomic():
                _audit_refusal(self.user, tenant_id, "not_found", handler_cls.permission, path)
            raise SubscribeRefused("not_found", "No such stream.")
        return handler, latest

    async def _unsubscribe(self, content: dict[str, Any], ref: Any) -> None:
        stream = content.get("stream")
        async with self._lock:
            if not isinstance(stream, str) or stream not in self.subs:
                raise SubscribeRefused("not_subscribed", "This socket is not subscribed to that stream.")
            await self._drop(stream)
        await self.send_json({"type": "unsubscribed", "id": ref, "stream": stream, "reason": "requested"})

    async def _drop(self, stream: str) -> None:
        sub = self.subs.pop(stream, None)
        if sub is None:
            return
        still = {g for s in self.subs.values() for g in s.groups}
        for group in sub.groups:
            if group not in still:
                await self.channel_layer.group_discard(group, self.channel_name)
        if sub.opened:
            with contextlib.suppress(Exception):
                await _db(sub.handler.on_close)()

    async def _end(self, stream: str, reason: str, **extra: Any) -> None:
        """The server ends a subscription: its access ended (``forbidden``), or the client is too
        far behind (``resync``, with ``seq``: the last event it was sent)."""
        if stream in self.subs:
            await self._drop(stream)
            if not self._closing:
                await self.send_json({"type": "unsubscribed", "stream": stream, "reason": reason, **extra})

    # --- sending ---------------------------------------------------------------------------------
    async def _send(self, sub: Subscription, event: Event, message: dict[str, Any] | None = None) -> None:
        """Send one event (numbers at or below the cursor were dealt with: dropped). ``message``:
        the channel-layer message it came from (its frame is then encoded once per process)."""
        if event.seq <= sub.cursor or self._closing:
            return
        sub.cursor = event.seq
        shown = sub.handler.visible(event)
        if shown is None:
            return
        if message is not None and shown is event:
            head, tail = _frames.parts(message, sub.stream, shown)
        else:
            head, tail = frame_parts(sub.stream, shown)
        await self.send(text_data=f"{head}{json.dumps(sub.sent)}{tail}")
        sub.sent = shown.seq

    def _between_scoped(self, sub: Subscription, after: int, before: int | None, refresh: bool) -> list[Event]:
        with tenant_scope(sub.handler.tenant_id):
            if refresh:
                sub.handler.refresh()
            return sub.handler.between(after, before, REPLAY_MAX + 1)

    async def _fill(self, sub: Subscription, before: int | None, refresh: bool = False) -> bool:
        """Send the persisted events after the cursor (and below ``before``) from the database.
        False when there were too many: the subscription is ended with ``reason: "resync"`` (the
        client reads the rest over REST and subscribes again with ``after``), never skipped over."""
        if before is not None and before <= sub.cursor + 1 and not refresh:
            return True
        missed = await _db(self._between_scoped)(sub, sub.cursor, before, refresh)
        for event in missed[:REPLAY_MAX]:
            await self._send(sub, event)
        if len(missed) > REPLAY_MAX:
            await self._end(sub.stream, "resync", seq=sub.sent)
            return False
        if before is not None:  # every number below ``before`` was dealt with (hidden ones too)
            sub.cursor = max(sub.cursor, before - 1)
        return True

    # --- channel-layer messages ------------------------------------------------------------------
    async def _live(self, message: dict[str, Any]) -> None:
        # An event reaches only the subscriptions that joined its group; one that names none (an
        # older publisher) is dropped: the database fill brings it, to the right subscriptions.
        group = message.get("group")
        if not isinstance(group, str):
            return
        async with self._lock:
            for sub in list(self.subs.values()):
                if group not in sub.groups:
                    continue
                event = sub.handler.from_message(message)
                if event is None:
                    continue
                refresh = sub.handler.needs_refresh(event)
                if (event.seq > sub.cursor + 1 or refresh) and not await self._fill(sub, event.seq, refresh):
                    continue
                await self._send(sub, event, message)

    async def job_event(self, message: dict[str, Any]) -> None:
        await self._live(message)

    async def federation_event(self, message: dict[str, Any]) -> None:
        await self._live(message)

    async def dataset_event(self, message: dict[str, Any]) -> None:
        await self._live(message)

    async def audit_event(self, message: dict[str, Any]) -> None:
        await self._live(message)

    async def dataset_access_changed(self, message: dict[str, Any]) -> None:
        """A grant was revoked or a dataset deleted: the subscriptions on that group look again."""
        group = message.get("group")
        async with self._lock:
            for sub in [s for s in self.subs.values() if group is None or group in s.groups]:
                if not await _db(self._allowed_scoped)(sub):
                    await self._end(sub.stream, "forbidden")

    async def tenant_control(self, message: dict[str, Any]) -> None:
        """Membership ended, tenant suspended, an API key revoked (``user_id`` ``key:<prefix>``)."""
        if message.get("action") != "close":
            return
        target = message.get("user_id")
        if target is not None and target != self.user.pk:
            return
        if self._is_key():
            await self._close(CLOSE_FORBIDDEN)
            return
        # A person's subscriptions in that tenant look again (a role change may leave some).
        tenant = _tenant_of_group(message.get("group"))
        async with self._lock:
            for sub in list(self.subs.values()):
                if tenant is not None and sub.handler.tenant_id != tenant:
                    continue
                if not await _db(self._allowed_scoped)(sub):
                    await self._end(sub.stream, "forbidden")

    async def user_control(self, message: dict[str, Any]) -> None:
        """A session ended (logout): its sockets close; ``session_key`` None: every session's."""
        key = message.get("session_key")
        if key is None or key == self.session_key:
            await self._close(CLOSE_UNAUTHENTICATED)

    # --- the backstop ----------------------------------------------------------------------------
    def _allowed_scoped(self, sub: Subscription, members: dict[tuple[str, str], int | None] | None = None) -> bool:
        key = (sub.slug, sub.handler.permission)
        if members is not None and key in members:
            tenant_id = members[key]
        else:
            tenant_id, _code, _reason, _t = _check_member(self.user, sub.slug, sub.handler.permission)
            if members is not None:
                members[key] = tenant_id
        if tenant_id != sub.handler.tenant_id:
            return False
        with tenant_scope(tenant_id):
            return sub.handler.still_allowed()

    def _latest_scoped(self, sub: Subscription) -> int:
        with tenant_scope(sub.handler.tenant_id):
            return sub.handler.latest()

    def _recheck_reads(self, subs: list[Subscription]) -> tuple[int, dict[str, int | None]]:
        """The recheck's reads, in one thread hop: the principal's close code (0: it stands) and,
        while it stands, each subscription's latest number (None: its access ended)."""
        code = self._principal_state()
        if code:
            return code, {}
        members: dict[tuple[str, str], int | None] = {}  # one membership look per tenant and permission
        latest: dict[str, int | None] = {}
        for sub in subs:
            latest[sub.stream] = self._latest_scoped(sub) if self._allowed_scoped(sub, members) else None
        return 0, latest

    def _principal_state(self) -> int:
        """0 while the principal stands, else the close code."""
        if self._is_key():
            state = _key_state(self.user.prefix)
            return 0 if state == "live" else CLOSE_UNAUTHENTICATED if state == "expired" else CLOSE_FORBIDDEN
        return 0 if session_live(self.session_key, self.user) else CLOSE_UNAUTHENTICATED

    async def _watch_loop(self, every: float) -> None:
        expires = getattr(self.user, "expires_at", None) if self._is_key() else None
        try:
            # The first look comes at a random point of the interval, so sockets opened together
            # (a server restart's reconnects) do not all look at once.
            first = True
            while not self._closing:
                wait = every * random.uniform(0.5, 1.0) if first else every
                first = False
                if expires is not None:
                    from django.utils import timezone

                    wait = min(wait, max(0.0, (expires - timezone.now()).total_seconds()))
                await asyncio.sleep(wait)
                await self.recheck()
        except asyncio.CancelledError:
            raise
        except Exception:  # the backstop must not die quietly: close, the client reconnects
            logger.exception("live socket recheck failed")
            await self._close(CLOSE_INTERNAL)

    async def recheck(self) -> None:
        """The backstop: the principal, every subscription's access, and what the channel layer
        may have dropped at a stream's tail."""
        async with self._lock:
            subs = list(self.subs.values())
            code, latest = await _db(self._recheck_reads)(subs)
            if code:
                await self._close(code)
                return
            for sub in subs:
                if self.subs.get(sub.stream) is not sub:
                    continue  # ended meanwhile (a fill's resync)
                last = latest[sub.stream]
                if last is None:
                    await self._end(sub.stream, "forbidden")
                elif last > sub.cursor:
                    await self._fill(sub, last + 1)


def _tenant_of_group(group: Any) -> int | None:
    m = re.fullmatch(r"t(\d+)\.control", group) if isinstance(group, str) else None
    return int(m[1]) if m else None


def session_live(session_key: str | None, user: Any) -> bool:
    """Is the browser session behind a socket still this user's (not logged out, expired, flushed
    by a password change, the user not deactivated)?"""
    from importlib import import_module
    from types import SimpleNamespace

    from django.contrib.auth import get_user

    if not session_key:
        return False
    # Django's own check of a request's session (backend, active user, session auth hash), on the
    # stored session: an expired or deleted one loads empty.
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    found = get_user(SimpleNamespace(session=store))  # type: ignore[arg-type]
    return bool(found.is_authenticated and found.pk == user.pk)


def close_session_sockets(user_id: int, session_key: str | None) -> None:
    """Close the sockets of one session (``session_key``) or of all the user's sessions (None)."""
    from apps.common.publisher import publish

    publish(user_group(user_id), {"type": "user.control", "session_key": session_key})


__all__ = [
    "CLOSE_FORBIDDEN",
    "CLOSE_NOT_FOUND",
    "CLOSE_UNAUTHENTICATED",
    "Event",
    "LiveConsumer",
    "StreamHandler",
    "close_session_sockets",
    "handlers",
]
