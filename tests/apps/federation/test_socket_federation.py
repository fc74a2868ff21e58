"""A federation on the one websocket endpoint (``/ws/v1/``, ``apps.federation.consumers.FederationStream``):
the coordinator and a site's owner subscribe to the same stream on one socket each and see what
the REST events list shows them; an owner's numbers skip other sites' events and ``prev`` says
it missed nothing; a tenant with no part in it gets ``not_found``; one socket carries several
tenants' streams for a person who belongs to several."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async

from apps.federation.services.events import append_event
from apps.tenancy.models import Membership, Role
from apps.tenancy.scope import tenant_scope
from tests.apps.common.test_socket import _events, _open, _subscribe
from tests.apps.federation.test_stream import SUBMITTED, _draft, _fed_and_sites, _rest_events, asgi_app  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def _bare(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"seq": m["seq"], "kind": m["type"].removeprefix("federation."), **m["payload"]} for m in msgs]


async def test_coordinator_and_owner_see_what_rest_shows_them(
    asgi_app: Any,  # noqa: F811
    consortium: dict[str, Any],
    make_tenant: Any,
    member: Any,
) -> None:
    c = consortium
    fed_id = await sync_to_async(_draft)(c, (True, False, False))
    fed, sites = await sync_to_async(_fed_and_sites)(c, fed_id)
    lab, h0 = c["lab"], c["hospitals"][0]
    stream_lab = f"tenants/{lab.slug}/federations/{fed_id}"
    stream_h0 = f"tenants/{h0['tenant'].slug}/federations/{fed_id}"

    coord = await _open(asgi_app, c["lab_user"])
    owner = await _open(asgi_app, h0["user"])
    assert (await _subscribe(coord, stream_lab, after=0))["seq"] == 4
    replay_lab = await _events(coord, 4)
    ack = await _subscribe(owner, stream_h0, after=0)
    assert ack["type"] == "subscribed"
    replay_h0 = await _events(owner, 2)  # the draft and its own approval
    # Live: each site trains and submits; the coordinator sees hospital 0's figures (shared) only.
    for s in sites:
        await sync_to_async(append_event)(fed, "site", {"state": "submitted", **SUBMITTED}, round_number=1, site_id=s)
    live_lab = await _events(coord, 3)
    live_h0 = await _events(owner, 1)
    assert await owner.receive_nothing(timeout=0.3)

    rest_lab = await sync_to_async(_rest_events)(c["lab_client"], lab.slug, fed_id)
    rest_h0 = await sync_to_async(_rest_events)(h0["client"], h0["tenant"].slug, fed_id)
    assert _bare(replay_lab + live_lab) == rest_lab
    assert _bare(replay_h0 + live_h0) == rest_h0
    assert [m["payload"]["site"] for m in live_lab] == sites
    assert "loss" in live_lab[0]["payload"]["data"] and "loss" not in live_lab[1]["payload"]["data"]
    # The owner's numbers skip the other sites' events; ``prev`` chains what it was sent.
    got = replay_h0 + live_h0
    assert [m["prev"] for m in got] == [0, *[m["seq"] for m in got[:-1]]]
    assert got[-1]["seq"] == 5 and got[-1]["prev"] == 2
    await coord.disconnect()
    await owner.disconnect()

    # A tenant with no part in it: like a missing federation. A person in two tenants: one socket.
    stranger = await sync_to_async(make_tenant)()
    both = await sync_to_async(member)(Role.ANALYST, tenant=stranger)

    def join_lab() -> None:
        with tenant_scope(lab.pk):
            Membership.objects.create(tenant=lab, user=both, role=Role.ANALYST)

    await sync_to_async(join_lab)()
    comm = await _open(asgi_app, both)
    assert (await _subscribe(comm, f"tenants/{stranger.slug}/federations/{fed_id}"))["code"] == "not_found"
    assert (await _subscribe(comm, stream_lab))["type"] == "subscribed"
    await sync_to_async(append_event)(fed, "state", {"status": "running"})
    (msg,) = await _events(comm, 1)
    assert (msg["stream"], msg["seq"], msg["type"]) == (stream_lab, 8, "federation.state")
    await comm.disconnect()
