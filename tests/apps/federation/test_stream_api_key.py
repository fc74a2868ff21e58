"""Integrators watch a federation with an API key (``Authorization: Bearer`` on the handshake,
``apps.accounts.websocket``): no cookie and no ``Origin`` needed; a bad key opens nothing (never a
fallback to a session); a key answers for its own tenant only; revoking it closes its sockets
within 5 s (4403) and an expiring key's socket closes when it expires (4401)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from apps.accounts.models import ApiKey
from apps.audit.models import AuditEvent
from apps.tenancy.scope import platform_scope, tenant_scope
from tests.apps.federation.test_stream import _draft, _receive, asgi_app  # noqa: F401
from tests.conftest import write_report

pytestmark = pytest.mark.django_db(transaction=True)


def _ws(app: Any, slug: str, fed_id: int, *auth: bytes, origin: bytes | None = None) -> WebsocketCommunicator:
    headers = [(b"host", b"127.0.0.1:8000"), *((b"authorization", a) for a in auth)]
    if origin is not None:
        headers.append((b"origin", origin))
    return WebsocketCommunicator(app, f"/ws/v1/tenants/{slug}/federations/{fed_id}/", headers=headers)


async def _closed_with(comm: WebsocketCommunicator, timeout: float = 5.0) -> tuple[int, float]:
    """Wait for the server's close (skipping events): (code, seconds waited)."""
    started = time.monotonic()
    while True:
        out = await comm.receive_output(timeout=max(0.01, timeout - (time.monotonic() - started)))
        if out["type"] == "websocket.close":
            return int(out["code"]), time.monotonic() - started


async def test_an_api_key_streams_its_tenants_federation_and_nothing_else(
    asgi_app: Any,  # noqa: F811
    consortium: dict[str, Any],
    api_key_for: Any,
) -> None:
    c = consortium
    fed_id = await sync_to_async(_draft)(c)
    lab, hospital = c["lab"], c["hospitals"][0]["tenant"]
    key = await sync_to_async(api_key_for)(lab, ("read",))
    bearer = f"Bearer {key}".encode()

    # The coordinator's key, without cookie or Origin (and with a foreign Origin: a key is no
    # ambient credential): the replay of every event.
    for origin in (None, b"https://elsewhere.example"):
        comm = _ws(asgi_app, lab.slug, fed_id, bearer, origin=origin)
        connected, _ = await comm.connect(timeout=5)
        assert connected
        assert [m["seq"] for m in await _receive(comm, 4)] == [1, 2, 3, 4]
        await comm.disconnect()

    # A participant's own key sees the federation too (its own tenant's view).
    own = await sync_to_async(api_key_for)(hospital, ("read",))
    comm = _ws(asgi_app, hospital.slug, fed_id, f"Bearer {own}".encode())
    assert (await comm.connect(timeout=5))[0]
    await comm.disconnect()

    # Refused: a wrong secret, a malformed header, two headers (4401, no session fallback), and the lab's key on another tenant's slug (4404, like a missing stream).
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for auth, code in [
        ((f"Bearer {wrong}".encode(),), 4401),
        ((b"Bearer",), 4401),
        ((bearer, bearer), 4401),
    ]:
        connected, got = await _ws(asgi_app, lab.slug, fed_id, *auth).connect(timeout=5)
        assert not connected and got == code, (auth, got)
    connected, got = await _ws(asgi_app, hospital.slug, fed_id, bearer).connect(timeout=5)
    assert not connected and got == 4404

    # A key already expired, and the audit stream (the integrator role may not read the audit log).
    expired = await sync_to_async(_expired_key)(api_key_for, lab)
    connected, got = await _ws(asgi_app, lab.slug, fed_id, f"Bearer {expired}".encode()).connect(timeout=5)
    assert not connected and got == 4401
    audit = WebsocketCommunicator(asgi_app, f"/ws/v1/tenants/{lab.slug}/audit/",
                                  headers=[(b"host", b"127.0.0.1:8000"), (b"authorization", bearer)])  # fmt: skip
    connected, got = await audit.connect(timeout=5)
    assert not connected and got == 4403
    # Another scheme (a proxy's Basic auth) is not a key: the browser's session path, cookie and Origin.
    session = await sync_to_async(_session_cookie)(c["lab_user"])
    comm = WebsocketCommunicator(asgi_app, f"/ws/v1/tenants/{lab.slug}/federations/{fed_id}/", headers=[
        (b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000"), (b"authorization", b"Basic dXNlcjpwYXNz"),
        (b"cookie", session)])  # fmt: skip
    assert (await comm.connect(timeout=5))[0]
    await comm.disconnect()

    def denials() -> list[str]:
        with platform_scope():
            rows = AuditEvent.all_tenants.filter(action="api_key.use_denied").order_by("id")
            return [e.details_dict["reason"] for e in rows]

    # Audited as on REST (the two-header case never reaches a key).
    assert await sync_to_async(denials)() == ["unknown_key", "malformed_header", "expired"]

    def refusals() -> list[tuple[int | None, str, str]]:
        with platform_scope():
            rows = AuditEvent.all_tenants.filter(action="access.denied").order_by("id")
            return [(e.tenant_id, e.details_dict["reason"], e.details_dict["method"]) for e in rows]

    # A valid key refused by the stream (another tenant's slug, a permission its role lacks): an
    # access.denied event in the URL's tenant, as a refused REST request gets.
    assert await sync_to_async(refusals)() == [
        (hospital.pk, "api_key_other_tenant", "WEBSOCKET"),
        (lab.pk, "api_key_scope", "WEBSOCKET"),
    ]


async def test_revoking_a_key_closes_its_sockets_and_an_expiring_key_closes_on_time(
    asgi_app: Any,  # noqa: F811
    consortium: dict[str, Any],
    api_key_for: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = consortium
    fed_id = await sync_to_async(_draft)(c)
    lab = c["lab"]
    key = await sync_to_async(api_key_for)(lab, ("read",))
    other = await sync_to_async(api_key_for)(lab, ("read",))
    comm = _ws(asgi_app, lab.slug, fed_id, f"Bearer {key}".encode())
    bystander = _ws(asgi_app, lab.slug, fed_id, f"Bearer {other}".encode())
    assert (await comm.connect(timeout=5))[0] and (await bystander.connect(timeout=5))[0]
    await _receive(comm, 4)
    await _receive(bystander, 4)

    def revoke_key(secret: str) -> None:
        row = _row_for(lab.pk, secret)
        r = c["lab_client"].delete(f"/api/v1/tenants/{lab.slug}/api-keys/{row.pk}/")
        assert r.status_code in (200, 204), r.content

    started = time.monotonic()
    await sync_to_async(revoke_key)(key)
    code, _ = await _closed_with(comm)
    revoke_seconds = time.monotonic() - started
    assert code == 4403 and revoke_seconds <= 5
    assert await bystander.receive_nothing(timeout=0.3)  # another key's socket stays open
    await bystander.disconnect()
    connected, got = await _ws(asgi_app, lab.slug, fed_id, f"Bearer {key}".encode()).connect(timeout=5)
    assert not connected and got == 4401  # and the revoked key opens nothing any more

    # The revocation message lost on the channel layer: the socket's own look at the key closes it.
    settings.COHORT_WS_KEY_RECHECK_SECONDS = 0.3
    lost = await sync_to_async(api_key_for)(lab, ("read",))
    comm = _ws(asgi_app, lab.slug, fed_id, f"Bearer {lost}".encode())
    assert (await comm.connect(timeout=5))[0]
    monkeypatch.setattr("apps.accounts.services._close_key_sockets", lambda *a: None)
    await sync_to_async(revoke_key)(lost)
    code, backstop_seconds = await _closed_with(comm)
    assert code == 4403 and backstop_seconds <= 2

    # A key that expires in 1.5 s: its socket closes then, with 4401.
    soon = await sync_to_async(api_key_for)(lab, ("read",), expires_at=timezone.now() + timedelta(seconds=1.5))
    comm = _ws(asgi_app, lab.slug, fed_id, f"Bearer {soon}".encode())
    assert (await comm.connect(timeout=5))[0]
    code, waited = await _closed_with(comm, timeout=6)
    assert code == 4401 and 0.5 <= waited <= 4, waited
    write_report(
        "API-5-api-keys",  # API-5's revocation figure, for an API key's socket
        {
            "revoked_key_socket_closed_seconds": round(revoke_seconds, 3),
            "expiry_close_seconds": round(waited, 3),
            "message_lost_backstop_close_seconds": round(backstop_seconds, 3),
        },
        passed=revoke_seconds <= 5,
    )


def _row_for(tenant_id: int, secret: str) -> ApiKey:
    from apps.accounts import keys

    prefix = keys.parse(secret)
    with tenant_scope(tenant_id):
        return ApiKey.objects.get(prefix=prefix)


def _expired_key(api_key_for: Any, tenant: Any) -> str:
    secret = str(api_key_for(tenant, ("read",), expires_at=timezone.now() + timedelta(seconds=30)))
    with tenant_scope(tenant.pk):
        ApiKey.objects.filter(pk=_row_for(tenant.pk, secret).pk).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
    return secret


def _session_cookie(user: Any) -> bytes:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()
