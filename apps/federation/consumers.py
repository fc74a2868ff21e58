"""Live federation stream: ``/ws/v1/tenants/<slug>/federations/<id>/?after=N``. Replays the
federation's persisted events after sequence number N, then forwards new ones as they are
committed (``apps.federation.live``). Every message carries the federation's own ``seq``.

Who sees what is what ``GET …/federations/<id>/events/?after=`` answers the same caller:

* the coordinator sees every event, and a site's metrics and counts (``n_examples``, ``loss``,
  ``update_norm``, ``seconds``, ``epsilon``, …) only where its owner allowed ``share_metrics``
  (or owns the site itself); other site events keep their public keys (``live.PUBLIC_SITE_EVENT_KEYS``);
* a site's owner sees the federation's own events (state, rounds) and its own sites' events in
  full, never another site's (RLS hides those rows; live ones are dropped here alike), so its
  ``seq`` skips the numbers of other sites' events.

The coordinator's ``seq`` is gap-free. Several site workers append concurrently, so their live
messages may reach the socket out of order, and the channel layer drops messages when a consumer
falls behind: a live event past the next number first sends the persisted events in between (read
again, as the replay reads them); a late duplicate is dropped. A client that still sees a jump (more
than :data:`REPLAY_MAX` behind) resyncs through the REST events list.

Another tenant's federation (not coordinated, no site in it) answers like a missing one (4404).
Handshake, membership, the role permission (``federation.list``), control-group closes and the
replay/dedup by ``seq`` come from :class:`apps.common.stream.TenantStreamConsumer`."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from django.db.models import Q, QuerySet

from apps.common.exceptions import NotFound
from apps.common.socket import Event, StreamHandler
from apps.common.stream import TenantStreamConsumer
from apps.federation import selectors
from apps.federation.access import access_federation
from apps.federation.live import event_dict, federation_group, filter_event
from apps.federation.models import Federation, FederationEvent
from apps.tenancy.models import Tenant
from apps.tenancy.scope import tenant_scope

REPLAY_MAX = 1000


def site_visibility(tenant_id: int, federation: Federation) -> tuple[frozenset[int] | None, frozenset[int]]:
    """In ``tenant_id``'s scope: (the sites whose events it sees, None for all; the sites whose
    metrics and counts it sees) — the REST view's ``visible`` set."""
    sites = list(selectors.federation_sites(federation=federation))
    coordinator = federation.tenant_id == tenant_id
    metrics = frozenset(s.pk for s in sites if (coordinator and s.share_metrics) or s.tenant_id == tenant_id)
    shown = None if coordinator else frozenset(s.pk for s in sites if s.tenant_id == tenant_id)
    return shown, metrics


def visible_events(
    federation: Federation, shown_sites: frozenset[int] | None, after: int, before: int | None = None
) -> QuerySet[FederationEvent]:
    """In the tenant's scope: the federation's events ``after < seq < before`` the tenant sees
    (``shown_sites`` None: every site's), oldest first."""
    events = selectors.event_list(federation=federation, after=after)
    if before is not None:
        events = events.filter(seq__lt=before)
    if shown_sites is not None:  # RLS already hides other sites' events from an owner
        events = events.filter(Q(site_id__isnull=True) | Q(site_id__in=shown_sites))
    return events


class FederationStreamConsumer(TenantStreamConsumer):
    permission = "federation.list"  # as the REST events view
    replays = True
    message_type = "federation.event"
    federation_id = 0
    federation: Federation | None = None
    shown_sites: frozenset[int] | None = None  # None: every site's events (the coordinator)
    metric_sites: frozenset[int] = frozenset()

    def parse_route(self, kwargs: dict[str, Any]) -> None:
        self.federation_id = int(kwargs["federation_id"])
        if not 0 < self.federation_id < 10**18:  # as the REST routes' ``pk`` converter: else a DB error
            raise ValueError(self.federation_id)

    def authorize_target(self, tenant_id: int) -> bool:
        """Coordinated or taken part in (else 4404, like a missing one). Remembers what the tenant
        may see of it."""
        try:
            fed = access_federation(tenant=Tenant(pk=tenant_id), federation_id=self.federation_id)
        except NotFound:
            return False
        self.federation = fed
        self.shown_sites, self.metric_sites = site_visibility(tenant_id, fed)
        return True

    def stream_groups(self, tenant_id: int) -> list[str]:
        assert self.federation is not None
        return [federation_group(self.federation.tenant_id, self.federation_id)]

    # --- reads (sync, in the tenant's scope) ------------------------------------------------------
    def _events(self, after: int, before: int | None = None) -> QuerySet[FederationEvent]:
        assert self.federation is not None
        return visible_events(self.federation, self.shown_sites, after, before)

    def replay(self, tenant_id: int, after: int) -> list[dict[str, Any]]:
        return [self.visible_event(event_dict(e)) for e in self._events(after)[:REPLAY_MAX]]

    def _between(self, after: int, before: int, refresh: bool) -> list[dict[str, Any]]:
        """The persisted events strictly between ``after`` and ``before`` (raw), re-reading the
        sites' visibility first when ``refresh``."""
        assert self.tenant_id is not None
        assert self.federation is not None
        with tenant_scope(self.tenant_id):
            if refresh:
                self.shown_sites, self.metric_sites = site_visibility(self.tenant_id, self.federation)
            if before <= after + 1:
                return []
            return [event_dict(e) for e in self._events(after, before)[:REPLAY_MAX]]

    # --- filtering --------------------------------------------------------------------------------
    def shows(self, event: dict[str, Any]) -> bool:
        return event.get("site") is None or self.shown_sites is None or event["site"] in self.shown_sites

    def visible_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """A site event's metrics and counts only for a caller who may see them (as the REST view)."""
        return filter_event(event, self.metric_sites)

    # --- live -------------------------------------------------------------------------------------
    async def federation_event(self, message: dict[str, Any]) -> None:
        event = message["event"]
        seq = int(event["seq"])
        if seq <= self.last_seq:
            return  # replayed already, or filled in from the database below
        # An owner's decision may change whose metrics the coordinator sees (share_metrics; only
        # while the federation is a draft): read the sites again before filtering.
        refresh = event.get("kind") == "site" and "approval" in (event.get("data") or {})
        if seq > self.last_seq + 1 or refresh:
            for missed in await database_sync_to_async(self._between)(self.last_seq, seq, refresh):
                if self.shows(missed):
                    await self.send_event(missed["seq"], self.visible_event(missed))
        if self.shows(event):
            await self.send_event(seq, self.visible_event(event))
        self.last_seq = max(self.last_seq, seq)  # a hidden event still moves the cursor


# --- the one endpoint's federation stream (apps.common.socket) -------------------------------------
def _federation_event(e: dict[str, Any]) -> Event:
    return Event(seq=int(e["seq"]), type=f"federation.{e['kind']}", time=e["created_at"],
                 payload={"round": e.get("round"), "site": e.get("site"), "data": e.get("data") or {}})  # fmt: skip


class FederationStream(StreamHandler):
    """``tenants/<slug>/federations/<id>``: what the REST events list shows the same caller
    (``federation.<kind>``: state, round, site, metrics). The coordinator sees every event, and a
    site's figures where its owner allowed it; a site's owner the federation's own events and its
    own sites' (the numbers of others' events are skipped: ``prev`` tells the client it missed
    nothing)."""

    kind = "federations"
    permission = "federation.list"
    federation: Federation | None = None
    shown_sites: frozenset[int] | None = None
    metric_sites: frozenset[int] = frozenset()

    def authorize(self) -> bool:
        try:
            fed = access_federation(tenant=Tenant(pk=self.tenant_id), federation_id=self.object_id)
        except NotFound:
            return False
        self.federation = fed
        self.shown_sites, self.metric_sites = site_visibility(self.tenant_id, fed)
        return True

    def refresh(self) -> None:
        assert self.federation is not None
        self.shown_sites, self.metric_sites = site_visibility(self.tenant_id, self.federation)

    def groups(self) -> list[str]:
        assert self.federation is not None
        return [federation_group(self.federation.tenant_id, self.object_id)]

    def between(self, after: int, before: int | None, limit: int) -> list[Event]:
        assert self.federation is not None
        events = visible_events(self.federation, self.shown_sites, after, before)
        return [_federation_event(event_dict(e)) for e in events[:limit]]

    def latest(self) -> int:
        return int(Federation.objects.filter(pk=self.object_id).values_list("event_seq", flat=True).first() or 0)

    def from_message(self, message: dict[str, Any]) -> Event | None:
        return _federation_event(message["event"]) if message.get("type") == "federation.event" else None

    def needs_refresh(self, event: Event) -> bool:
        # An owner's decision may change whose figures the coordinator sees (share_metrics).
        return event.type == "federation.site" and "approval" in event.payload["data"]

    def visible(self, event: Event) -> Event | None:
        site = event.payload.get("site")
        if site is not None and self.shown_sites is not None and site not in self.shown_sites:
            return None
        shown = filter_event(event.payload, self.metric_sites)
        return event if shown is event.payload else Event(event.seq, event.type, event.time, shown)
