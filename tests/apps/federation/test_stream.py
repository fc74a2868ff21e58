"""The live federation stream: replay after a sequence number, then live events in order without
gaps (also when a live message is lost or overtaken), the REST events view's per-site filtering,
and the handshake refusals (anonymous, another tenant's federation like a missing one)."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from apps.federation.live import event_dict, federation_group
from apps.federation.models import Federation, FederationEvent, FederationSite
from apps.federation.services import events as event_services
from apps.federation.services.events import append_event
from apps.tenancy.models import Role
from apps.tenancy.scope import tenant_scope
from tests.apps.federation.conftest import create_federation

pytestmark = pytest.mark.django_db(transaction=True)

# What a site event carries once its slot is done (apps.federation.services.rounds._after_slot).
SUBMITTED = {"n_examples": 120, "n_eval": 30, "loss": 0.41, "update_norm": 1.7, "seconds": 2.5, "epsilon": 0.8}


@pytest.fixture
def asgi_app(settings: Any) -> Any:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    from config.asgi import application

    return application


def _ws(app: Any, slug: str, fed_id: int, user: Any | None, query: str = "") -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000")]
    if user is not None:
        c = Client()
        c.force_login(user)
        headers.append((b"cookie", f"sessionid={c.cookies['sessionid'].value}".encode()))
    return WebsocketCommunicator(app, f"/ws/v1/tenants/{slug}/federations/{fed_id}/{query}", headers=headers)


def _draft(c: dict[str, Any], share: tuple[bool, ...] = (False, False, False)) -> int:
    """A draft federation, every hospital approving (``share[i]``: hospital i lets the coordinator
    see its metrics). Events 1 (draft) and 2–4 (the approvals)."""
    r = create_federation(c)
    assert r.status_code == 201, r.content
    fed_id = int(r.json()["id"])
    for h, share_metrics in zip(c["hospitals"], share, strict=True):
        slug = h["tenant"].slug
        inbox = h["client"].get(f"/api/v1/tenants/{slug}/federation-sites/").json()["results"]
        site = next(s for s in inbox if s["federation"] == fed_id)
        r = h["client"].post(
            f"/api/v1/tenants/{slug}/federation-sites/{site['id']}/approve/",
            {"digest": site["digest"], "share_metrics": share_metrics},
            format="json",
        )
        assert r.status_code == 200, r.content
    return fed_id


def _fed_and_sites(c: dict[str, Any], fed_id: int) -> tuple[Federation, list[int]]:
    """The federation and its site ids, hospital by hospital."""
    with tenant_scope(c["lab"].pk):
        fed = Federation.objects.get(pk=fed_id)
        by_tenant = dict(FederationSite.all_tenants.filter(federation=fed).values_list("tenant_id", "pk"))
    return fed, [by_tenant[h["tenant"].pk] for h in c["hospitals"]]


def _site_done(fed: Federation, site_id: int, round_number: int = 1) -> int:
    return append_event(fed, "site", {"state": "submitted", **SUBMITTED}, round_number=round_number, site_id=site_id)


def _rest_events(client: Any, slug: str, fed_id: int, after: int = 0) -> list[dict[str, Any]]:
    r = client.get(f"/api/v1/tenants/{slug}/federations/{fed_id}/events/?after={after}")
    assert r.status_code == 200, r.content
    assert not r.json().get("next")
    return [{k: e[k] for k in ("seq", "kind", "round", "site", "data")} for e in r.json()["results"]]


async def _receive(comm: WebsocketCommunicator, n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        msg = await comm.receive_json_from(timeout=5)
        assert msg["type"] == "federation.event" and msg["seq"] == msg["event"]["seq"], msg
        out.append(msg)
    return out


def _bare(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: m["event"][k] for k in ("seq", "kind", "round", "site", "data")} for m in msgs]


async def test_replay_after_n_then_live_in_order_without_gaps(
    asgi_app: Any, consortium: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = consortium
    fed_id = await sync_to_async(_draft)(c)
    fed, sites = await sync_to_async(_fed_and_sites)(c, fed_id)

    comm = await sync_to_async(_ws)(asgi_app, c["lab"].slug, fed_id, c["lab_user"], "?after=2")
    connected, _ = await comm.connect(timeout=5)
    assert connected
    replayed = await _receive(comm, 2)
    assert [m["seq"] for m in replayed] == [3, 4]
    assert all(m["event"]["kind"] == "site" and m["event"]["data"] == {"approval": "approved"} for m in replayed)
    assert await comm.receive_nothing(timeout=0.2)

    # Live: each appended event arrives once, with the next number.
    await sync_to_async(append_event)(fed, "state", {"status": "running"})
    for s in sites:
        await sync_to_async(append_event)(fed, "site", {"state": "training", "attempt": 1}, round_number=1, site_id=s)
    live = await _receive(comm, 4)
    assert [m["seq"] for m in live] == [5, 6, 7, 8]
    assert [m["event"]["site"] for m in live] == [None, *sites]

    # A live message lost on the channel layer (seq 9 never published): the next one brings it
    # from the database first.
    publish = event_services.publish_federation_event
    monkeypatch.setattr(event_services, "publish_federation_event", lambda e: None if e.seq == 9 else publish(e))
    await sync_to_async(_site_done)(fed, sites[0])
    await sync_to_async(_site_done)(fed, sites[1])
    assert [m["seq"] for m in await _receive(comm, 2)] == [9, 10]

    # Two site workers' messages overtaking each other (11 committed first, 12 delivered first):
    # 11 is filled in before 12, and its late message is dropped.
    monkeypatch.setattr(event_services, "publish_federation_event", lambda e: None)
    await sync_to_async(_site_done)(fed, sites[2])
    await sync_to_async(append_event)(fed, "round", {"status": "closed", "kind": "train"}, round_number=1)

    def raw(seq: int) -> dict[str, Any]:
        with tenant_scope(c["lab"].pk):
            return event_dict(FederationEvent.objects.get(federation_id=fed_id, seq=seq))

    layer = get_channel_layer()
    group = federation_group(c["lab"].pk, fed_id)
    for seq in (12, 11):
        event = await sync_to_async(raw)(seq)
        await layer.group_send(group, {"type": "federation.event", "event": event})
    assert [m["seq"] for m in await _receive(comm, 2)] == [11, 12]
    monkeypatch.setattr(event_services, "publish_federation_event", publish)
    await sync_to_async(append_event)(fed, "state", {"status": "completed", "reason": ""})
    assert [m["seq"] for m in await _receive(comm, 1)] == [13]
    assert await comm.receive_nothing(timeout=0.2)
    await comm.disconnect()

    # A fresh connection without ``after`` replays everything, 1..13.
    again = await sync_to_async(_ws)(asgi_app, c["lab"].slug, fed_id, c["lab_user"])
    assert (await again.connect(timeout=5))[0]
    assert [m["seq"] for m in await _receive(again, 13)] == list(range(1, 14))
    assert await again.receive_nothing(timeout=0.2)
    await again.disconnect()


async def test_each_side_sees_what_the_rest_events_view_shows(asgi_app: Any, consortium: dict[str, Any]) -> None:
    c = consortium
    # Hospital 0 shares its metrics with the coordinator; hospitals 1 and 2 do not.
    fed_id = await sync_to_async(_draft)(c, (True, False, False))
    fed, sites = await sync_to_async(_fed_and_sites)(c, fed_id)
    for s in sites:
        await sync_to_async(_site_done)(fed, s)
    await sync_to_async(append_event)(fed, "round", {"status": "closed", "kind": "train"}, round_number=1)
    total = 8  # draft, 3 approvals, 3 site events, the round

    lab = c["lab"]
    comm = await sync_to_async(_ws)(asgi_app, lab.slug, fed_id, c["lab_user"])
    assert (await comm.connect(timeout=5))[0]
    coordinator = _bare(await _receive(comm, total))
    assert coordinator == await sync_to_async(_rest_events)(c["lab_client"], lab.slug, fed_id)
    done = {e["site"]: e["data"] for e in coordinator if e["data"].get("state") == "submitted"}
    assert done[sites[0]] == {"state": "submitted", **SUBMITTED}
    assert done[sites[1]] == done[sites[2]] == {"state": "submitted"}

    h = c["hospitals"][1]
    owner = await sync_to_async(_ws)(asgi_app, h["tenant"].slug, fed_id, h["user"])
    assert (await owner.connect(timeout=5))[0]
    # The draft, its own approval, its own site event, the round: never another site's events.
    seen = _bare(await _receive(owner, 4))
    assert await owner.receive_nothing(timeout=0.2)
    assert seen == await sync_to_async(_rest_events)(h["client"], h["tenant"].slug, fed_id)
    assert [e["seq"] for e in seen] == [1, 3, 6, 8]
    assert {e["site"] for e in seen} == {None, sites[1]}
    assert seen[2]["data"] == {"state": "submitted", **SUBMITTED}  # its own site, in full

    # Live: another site's event reaches neither view in full, and not the owner at all.
    await sync_to_async(_site_done)(fed, sites[2], 2)
    await sync_to_async(_site_done)(fed, sites[1], 2)
    assert _bare(await _receive(comm, 2)) == await sync_to_async(_rest_events)(c["lab_client"], lab.slug, fed_id, total)
    mine = _bare(await _receive(owner, 1))
    assert mine == [
        {"seq": 10, "kind": "site", "round": 2, "site": sites[1], "data": {"state": "submitted", **SUBMITTED}}
    ]
    assert mine == await sync_to_async(_rest_events)(h["client"], h["tenant"].slug, fed_id, total)
    assert await owner.receive_nothing(timeout=0.2)
    await comm.disconnect()
    await owner.disconnect()


async def test_refused_handshakes(asgi_app: Any, consortium: dict[str, Any], make_tenant: Any, member: Any) -> None:
    c = consortium
    fed_id = await sync_to_async(_draft)(c)
    stranger = await sync_to_async(make_tenant)()
    outsider = await sync_to_async(member)(Role.OWNER, tenant=stranger)
    auditor = await sync_to_async(member)(Role.AUDITOR, tenant=c["lab"])

    async def code(slug: str, fid: int, user: Any | None) -> int | None:
        comm = await sync_to_async(_ws)(asgi_app, slug, fid, user)
        connected, close_code = await comm.connect(timeout=5)
        await comm.disconnect()
        return None if connected else close_code

    assert await code(c["lab"].slug, fed_id, None) == 4401  # anonymous
    # Another tenant's federation answers exactly like one that does not exist.
    assert await code(stranger.slug, fed_id, outsider) == 4404
    assert await code(stranger.slug, 10**9, outsider) == 4404
    assert await code(stranger.slug, 10**19, outsider) == 4404
    assert await code(c["lab"].slug, fed_id, outsider) == 4404  # not a member of the coordinator
    # A member with federation.list (an auditor) may watch; so may a participating site's owner.
    assert await code(c["lab"].slug, fed_id, auditor) is None
    h = c["hospitals"][0]
    assert await code(h["tenant"].slug, fed_id, h["user"]) is None
