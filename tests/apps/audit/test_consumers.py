"""Live audit websocket (API-5, ISO-9): handshake checks, tenant isolation, revocation closes."""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from tests.conftest import write_report

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def asgi_app(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    from config.asgi import application

    return application


def _cookie_for(user) -> bytes:
    c = Client()
    c.force_login(user)
    return f"sessionid={c.cookies['sessionid'].value}".encode()


def _ws(app, slug, cookie=None, origin=b"http://127.0.0.1:8000"):
    headers = [(b"origin", origin), (b"host", b"127.0.0.1:8000")]
    if cookie:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(app, f"/ws/v1/tenants/{slug}/audit/", headers=headers)


async def _until_close(comm, timeout=5.0):
    """Read messages (live audit events may arrive first) until the server closes the socket."""
    deadline = time.monotonic() + timeout
    while True:
        out = await comm.receive_output(timeout=max(0.01, deadline - time.monotonic()))
        if out["type"] == "websocket.close":
            return out


async def _connect(comm):
    connected, code = await comm.connect(timeout=5)
    return connected, code


async def _bad_handshakes(asgi_app, tenant, other_tenant, member):
    """(handshakes accepted that must be refused, of them cross-tenant ones, the tenant's auditor)."""
    auditor = await sync_to_async(member)("auditor", tenant=tenant)
    outsider = await sync_to_async(member)("owner", tenant=other_tenant)
    analyst = await sync_to_async(member)("analyst", tenant=tenant)
    bad = cross = 0
    cases = [  # (socket, should connect, crosses tenants)
        (_ws(asgi_app, tenant.slug), False, False),  # anonymous
        (
            _ws(asgi_app, tenant.slug, await sync_to_async(_cookie_for)(auditor), origin=b"http://evil.example"),
            False,
            False,
        ),
        (_ws(asgi_app, tenant.slug, await sync_to_async(_cookie_for)(outsider)), False, True),  # other tenant
        (_ws(asgi_app, "no-such-tenant", await sync_to_async(_cookie_for)(auditor)), False, False),
        (_ws(asgi_app, tenant.slug, await sync_to_async(_cookie_for)(analyst)), False, False),  # lacks audit.list
    ]
    for comm, should_connect, crosses in cases:
        connected, _ = await _connect(comm)
        bad += int(connected != should_connect)
        cross += int(connected and crosses)
        await comm.disconnect()
    return bad, cross, auditor


async def test_handshakes_refused_and_allowed(asgi_app, tenant, other_tenant, member):
    bad, _cross, auditor = await _bad_handshakes(asgi_app, tenant, other_tenant, member)
    ok = _ws(asgi_app, tenant.slug, await sync_to_async(_cookie_for)(auditor))
    connected, _ = await _connect(ok)
    assert connected
    from apps.audit.live import publish_audit_event

    await sync_to_async(publish_audit_event)(tenant.pk, {"action": "demo.event"})
    msg = await ok.receive_json_from(timeout=5)
    assert msg == {"type": "audit.event", "seq": 1, "event": {"action": "demo.event"}}
    await ok.disconnect()
    assert bad == 0


async def test_suspension_and_removal_close_sockets(asgi_app, tenant, other_tenant, member):
    from apps.tenancy.models import Membership
    from apps.tenancy.scope import tenant_scope
    from apps.tenancy.services import membership_remove, tenant_set_status

    bad, cross, _auditor = await _bad_handshakes(asgi_app, tenant, other_tenant, member)
    auditor = await sync_to_async(member)("auditor")
    other_auditor = await sync_to_async(member)("auditor")
    ws_a = _ws(asgi_app, tenant.slug, await sync_to_async(_cookie_for)(auditor))
    ws_b = _ws(asgi_app, tenant.slug, await sync_to_async(_cookie_for)(other_auditor))
    assert (await _connect(ws_a))[0] and (await _connect(ws_b))[0]

    def remove():
        with tenant_scope(tenant.pk):
            m = Membership.objects.get(user=auditor)
            membership_remove(tenant=tenant, actor_role="owner", membership=m)

    start = time.monotonic()
    await sync_to_async(remove)()
    out = await _until_close(ws_a)
    removal_s = time.monotonic() - start
    assert out["type"] == "websocket.close"
    # The other auditor stays connected: it only gets the live audit event of the removal.
    msg = await ws_b.receive_json_from(timeout=5)
    assert msg["event"]["action"] == "member.removed"

    start = time.monotonic()
    await sync_to_async(tenant_set_status)(tenant=tenant, status="suspended", reason="incident review")
    out_b = await _until_close(ws_b)
    suspend_s = time.monotonic() - start
    assert out_b["type"] == "websocket.close"
    passed = removal_s <= 5 and suspend_s <= 5 and bad == 0 and cross == 0
    write_report(
        "API-5",
        {
            "bad_handshakes_accepted": bad,
            "cross_tenant_subscriptions": cross,
            "seconds_to_close_after_removal": round(removal_s, 3),
            "seconds_to_close_after_suspension": round(suspend_s, 3),
        },
        passed,
    )
    assert passed
    await asyncio.sleep(0)
