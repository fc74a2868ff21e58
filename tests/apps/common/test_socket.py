"""The one websocket endpoint ``/ws/v1/`` (``apps.common.socket``, docs/websocket.md): subscribe to
several streams on one socket, every event numbered (``seq``, ``prev``), resume after a number,
gaps filled from the database, other tenants' streams refused exactly like missing ones, and
access that ends (a membership, a grant, a session, an API key) ending the socket or the
subscription within the recheck interval even when the control message is lost."""

from __future__ import annotations

import json
import time
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from apps.audit.models import AuditEvent
from apps.tenancy.models import Membership, Role
from apps.tenancy.scope import tenant_scope
from apps.training import services
from tests.apps.datasets.helpers import create_dataset, upload_version
from tests.apps.training.test_job_stream import _event_count, _finished_job, asgi_app  # noqa: F401
from tests.apps.training.test_jobs import breast_cancer_csv

pytestmark = pytest.mark.django_db(transaction=True)


def _session_headers(user: Any) -> list[tuple[bytes, bytes]]:
    c = Client()
    c.force_login(user)
    return [
        (b"origin", b"http://127.0.0.1:8000"),
        (b"host", b"127.0.0.1:8000"),
        (b"cookie", f"sessionid={c.cookies['sessionid'].value}".encode()),
    ]


async def _open(app: Any, user: Any = None, headers: list[tuple[bytes, bytes]] | None = None) -> WebsocketCommunicator:
    if headers is None:
        headers = await sync_to_async(_session_headers)(user)
    comm = WebsocketCommunicator(app, "/ws/v1/", headers=headers)
    connected, _ = await comm.connect(timeout=5)
    assert connected
    hello = await comm.receive_json_from(timeout=5)
    assert hello["type"] == "hello" and hello["protocol"] == 1, hello
    assert set(hello["kinds"]) == {"jobs", "federations", "datasets", "activity"}
    return comm


async def _owner_and_job(member: Any, tenant: Any, api_client_for: Any) -> tuple[Any, int, int]:
    """An owner of ``tenant``, a finished job of theirs, and its number of events."""
    owner = await sync_to_async(member)(Role.OWNER, tenant=tenant)
    job_id = await sync_to_async(_finished_job)(tenant, await sync_to_async(api_client_for)(owner))
    return owner, job_id, await sync_to_async(_event_count)(tenant.pk, job_id)


async def _subscribe(comm: WebsocketCommunicator, stream: str, **extra: Any) -> dict[str, Any]:
    await comm.send_json_to({"op": "subscribe", "id": stream, "stream": stream, **extra})
    return await comm.receive_json_from(timeout=5)


async def _events(comm: WebsocketCommunicator, n: int) -> list[dict[str, Any]]:
    out = [await comm.receive_json_from(timeout=5) for _ in range(n)]
    assert all("seq" in m for m in out), out
    return out


async def _until(comm: WebsocketCommunicator, pred: Any, timeout: float = 5.0) -> tuple[dict[str, Any], float]:
    """The first message (or close) for which ``pred`` holds, and the seconds it took."""
    started = time.monotonic()
    while True:
        out = await comm.receive_output(timeout=max(0.01, timeout - (time.monotonic() - started)))
        msg = {"type": "closed", "code": out["code"]} if out["type"] == "websocket.close" else json.loads(out["text"])
        if pred(msg):
            return msg, time.monotonic() - started


async def test_an_unauthenticated_socket_is_accepted_and_closed_with_4401(asgi_app: Any) -> None:  # noqa: F811
    comm = WebsocketCommunicator(asgi_app, "/ws/v1/", headers=[(b"origin", b"http://127.0.0.1:8000"),
                                                               (b"host", b"127.0.0.1:8000")])  # fmt: skip
    connected, _ = await comm.connect(timeout=5)
    assert connected  # a real client reads the close code, not an HTTP 403
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4401}


async def test_subscribe_replays_numbers_resumes_and_goes_live(
    asgi_app: Any,  # noqa: F811
    tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    owner = await sync_to_async(member)(Role.OWNER, tenant=tenant)
    analyst = await sync_to_async(member)(Role.ANALYST, tenant=tenant)
    job_id = await sync_to_async(_finished_job)(tenant, await sync_to_async(api_client_for)(owner))
    total = await sync_to_async(_event_count)(tenant.pk, job_id)
    stream = f"tenants/{tenant.slug}/jobs/{job_id}"

    comm = await _open(asgi_app, analyst)
    ack = await _subscribe(comm, stream, after=0)
    assert ack == {"type": "subscribed", "id": stream, "stream": stream, "seq": total}
    replay = await _events(comm, total)
    assert [m["seq"] for m in replay] == list(range(1, total + 1))
    assert [m["prev"] for m in replay] == list(range(0, total))
    assert all(m["stream"] == stream and m["type"].startswith("job.") and m["time"] for m in replay)
    assert {"step", "epoch", "data"} <= set(replay[-1]["payload"])
    # Live: the next number, ``prev`` the last one sent.
    await sync_to_async(services._event)(job_id, tenant.pk, "log", {"line": "hello"})
    (live,) = await _events(comm, 1)
    assert (live["seq"], live["prev"], live["type"]) == (total + 1, total, "job.log")
    assert live["payload"]["data"] == {"line": "hello"}
    await comm.disconnect()

    # Resume after a number: only what came later, then live, no duplicate.
    comm = await _open(asgi_app, analyst)
    assert (await _subscribe(comm, stream, after=total - 2))["type"] == "subscribed"
    resumed = await _events(comm, 3)
    assert [(m["seq"], m["prev"]) for m in resumed] == [(total - 1, total - 2), (total, total - 1), (total + 1, total)]
    await sync_to_async(services._event)(job_id, tenant.pk, "log", {"line": "again"})
    (live,) = await _events(comm, 1)
    assert (live["seq"], live["prev"]) == (total + 2, total + 1)
    # Without ``after``: live from now on.
    await comm.send_json_to({"op": "unsubscribe", "id": 7, "stream": stream})
    assert await comm.receive_json_from(timeout=5) == {"type": "unsubscribed", "id": 7, "stream": stream,
                                                        "reason": "requested"}  # fmt: skip
    ack = await _subscribe(comm, stream)
    assert ack["seq"] == total + 2
    await sync_to_async(services._event)(job_id, tenant.pk, "log", {"line": "third"})
    (live,) = await _events(comm, 1)
    assert (live["seq"], live["prev"]) == (total + 3, total + 2)  # prev starts at the subscribed seq
    assert await comm.receive_nothing(timeout=0.2)
    await comm.disconnect()


async def test_bad_messages_get_errors_and_the_socket_stays_open(
    asgi_app: Any,  # noqa: F811
    tenant: Any,
    member: Any,
) -> None:
    comm = await _open(asgi_app, await sync_to_async(member)(Role.ANALYST, tenant=tenant))
    cases = [
        ({"op": "dance"}, "bad_request"),
        ({"op": "subscribe"}, "bad_request"),
        ({"op": "subscribe", "stream": f"tenants/{tenant.slug}/spaceships/1"}, "bad_request"),
        ({"op": "subscribe", "stream": f"tenants/{tenant.slug}/jobs"}, "bad_request"),
        ({"op": "subscribe", "stream": f"tenants/{tenant.slug}/activity/3"}, "bad_request"),
        ({"op": "subscribe", "stream": f"tenants/{tenant.slug}/jobs/1", "after": -1}, "bad_request"),
        ({"op": "subscribe", "stream": f"tenants/{tenant.slug}/jobs/1", "after": "x"}, "bad_request"),
        ({"op": "unsubscribe", "stream": f"tenants/{tenant.slug}/jobs/1"}, "not_subscribed"),
    ]
    for message, code in cases:
        await comm.send_json_to(message)
        reply = await comm.receive_json_from(timeout=5)
        assert reply["type"] == "error" and reply["code"] == code and reply["message"], (message, reply)
    await comm.send_to(text_data="not json")
    assert (await comm.receive_json_from(timeout=5))["code"] == "bad_request"
    await comm.send_json_to({"op": "ping", "id": "p"})
    assert await comm.receive_json_from(timeout=5) == {"type": "pong", "id": "p"}
    await comm.disconnect()


async def test_other_tenants_streams_are_refused_like_missing_ones_and_audited(
    asgi_app: Any,  # noqa: F811
    tenant: Any,
    other_tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    owner = await sync_to_async(member)(Role.OWNER, tenant=tenant)
    outsider = await sync_to_async(member)(Role.OWNER, tenant=other_tenant)
    analyst = await sync_to_async(member)(Role.ANALYST, tenant=tenant)
    job_id = await sync_to_async(_finished_job)(tenant, await sync_to_async(api_client_for)(owner))

    comm = await _open(asgi_app, outsider)
    replies = []
    for stream in (
        f"tenants/{tenant.slug}/jobs/{job_id}",  # another tenant's job, named under its slug
        f"tenants/{other_tenant.slug}/jobs/{job_id}",  # another tenant's job under one's own slug
        f"tenants/{other_tenant.slug}/jobs/999999",  # a job that does not exist
        "tenants/no-such-tenant/jobs/1",
        f"tenants/{tenant.slug}/activity",
    ):
        reply = await _subscribe(comm, stream)
        replies.append({k: reply[k] for k in ("type", "code", "message")})
    assert all(r == {"type": "error", "code": "not_found", "message": "No such stream."} for r in replies), replies
    await comm.disconnect()
    # A role without the permission: forbidden (it is a member: as REST answers 403).
    comm = await _open(asgi_app, analyst)
    reply = await _subscribe(comm, f"tenants/{tenant.slug}/activity")
    assert (reply["type"], reply["code"]) == ("error", "forbidden")
    await comm.disconnect()

    def denied() -> list[dict[str, Any]]:
        with tenant_scope(tenant.pk):
            return list(AuditEvent.objects.filter(action="access.denied").values_list("details", flat=True))

    details = [json.loads(d) if isinstance(d, str) else d for d in await sync_to_async(denied)()]
    reasons = sorted(d["reason"] for d in details if d["method"] == "WEBSOCKET")
    assert reasons == ["not_a_member", "not_a_member", "role"], reasons


async def test_a_dropped_live_message_is_filled_from_the_database(
    asgi_app: Any,  # noqa: F811
    settings: Any,
    tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    settings.COHORT_WS_RECHECK_SECONDS = 0.3
    owner, job_id, total = await _owner_and_job(member, tenant, api_client_for)
    comm = await _open(asgi_app, owner)
    await _subscribe(comm, f"tenants/{tenant.slug}/jobs/{job_id}")
    with mock.patch("apps.training.services.events.publish_job_event"):  # the channel layer drops it
        await sync_to_async(services._event)(job_id, tenant.pk, "log", {"line": "dropped"})
    await sync_to_async(services._event)(job_id, tenant.pk, "log", {"line": "next"})
    got = await _events(comm, 2)  # the next one's arrival fills the gap first, in order
    assert [(m["seq"], m["prev"], m["payload"]["data"]["line"]) for m in got] == [
        (total + 1, total, "dropped"), (total + 2, total + 1, "next")]  # fmt: skip
    # A dropped last event: the periodic look at the stream's latest number sends it.
    with mock.patch("apps.training.services.events.publish_job_event"):
        await sync_to_async(services._event)(job_id, tenant.pk, "log", {"line": "tail"})
    msg, waited = await _until(comm, lambda m: "seq" in m)
    assert (msg["seq"], msg["payload"]["data"]["line"]) == (total + 3, "tail") and waited < 2
    await comm.disconnect()


async def test_an_ended_membership_ends_the_tenants_subscriptions_even_when_the_message_is_lost(
    asgi_app: Any,  # noqa: F811
    settings: Any,
    tenant: Any,
    other_tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    settings.COHORT_WS_RECHECK_SECONDS = 0.3
    _owner, job_id, _total = await _owner_and_job(member, tenant, api_client_for)
    analyst = await sync_to_async(member)(Role.ANALYST, tenant=tenant)
    comm = await _open(asgi_app, analyst)
    stream = f"tenants/{tenant.slug}/jobs/{job_id}"
    await _subscribe(comm, stream)

    def remove() -> None:
        from apps.tenancy.services import membership_remove

        with tenant_scope(tenant.pk):
            m = Membership.objects.get(tenant=tenant, user=analyst)
            membership_remove(tenant=tenant, actor_role=Role.OWNER, membership=m)

    with mock.patch("apps.tenancy.services._close_live_connections"):  # the control message is lost
        await sync_to_async(remove)()
    msg, waited = await _until(comm, lambda m: m["type"] != "hello")
    assert msg == {"type": "unsubscribed", "stream": stream, "reason": "forbidden"}, msg
    assert waited < 2
    # The socket itself stays (it may carry other tenants' streams); the stream stays refused.
    assert (await _subscribe(comm, stream))["code"] == "not_found"
    await comm.disconnect()


async def test_logout_closes_the_sessions_sockets(
    asgi_app: Any,  # noqa: F811
    tenant: Any,
    member: Any,
) -> None:
    analyst = await sync_to_async(member)(Role.ANALYST, tenant=tenant)

    def login() -> tuple[Client, list[tuple[bytes, bytes]]]:
        c = Client()
        c.force_login(analyst)
        return c, [(b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000"),
                   (b"cookie", f"sessionid={c.cookies['sessionid'].value}".encode())]  # fmt: skip

    client, headers = await sync_to_async(login)()
    _other_client, other_headers = await sync_to_async(login)()  # a second session of the same person
    comm = await _open(asgi_app, headers=headers)
    other = await _open(asgi_app, headers=other_headers)

    def logout() -> int:
        token = client.get("/api/v1/auth/csrf/").json()["csrf_token"]
        return int(
            client.post(
                "/api/v1/auth/logout/", "{}", content_type="application/json", HTTP_X_CSRFTOKEN=token
            ).status_code
        )

    assert await sync_to_async(logout)() in (200, 204)
    msg, waited = await _until(comm, lambda m: m["type"] == "closed")
    assert msg["code"] == 4401 and waited < 2
    assert await other.receive_nothing(timeout=0.3)  # the other session's socket stays open
    await other.disconnect()


async def test_a_revoked_api_key_closes_its_socket_and_a_key_sees_its_own_tenant_only(
    asgi_app: Any,  # noqa: F811
    settings: Any,
    tenant: Any,
    other_tenant: Any,
    member: Any,
    api_key_for: Any,
    api_client_for: Any,
) -> None:
    settings.COHORT_WS_RECHECK_SECONDS = 0.3
    _owner, job_id, _total = await _owner_and_job(member, tenant, api_client_for)
    key = await sync_to_async(api_key_for)(tenant, ("read",))
    other_key = await sync_to_async(api_key_for)(other_tenant, ("read",))
    stream = f"tenants/{tenant.slug}/jobs/{job_id}"

    other = await _open(
        asgi_app, headers=[(b"host", b"127.0.0.1:8000"), (b"authorization", f"Bearer {other_key}".encode())]
    )
    assert (await _subscribe(other, stream))["code"] == "not_found"
    await other.disconnect()

    comm = await _open(asgi_app, headers=[(b"host", b"127.0.0.1:8000"), (b"authorization", f"Bearer {key}".encode())])
    assert (await _subscribe(comm, stream))["type"] == "subscribed"

    def revoke() -> None:
        from apps.accounts.models import ApiKey
        from apps.accounts.services import api_key_revoke

        with tenant_scope(tenant.pk):
            api_key_revoke(tenant=tenant, key=ApiKey.objects.get())  # the tenant's only key

    with mock.patch("apps.accounts.services._close_key_sockets"):  # the control message is lost
        await sync_to_async(revoke)()
    msg, waited = await _until(comm, lambda m: m["type"] == "closed")
    assert msg["code"] == 4403 and waited < 2


async def test_a_revoked_grant_ends_the_grantees_job_subscription(
    asgi_app: Any,  # noqa: F811
    tenant: Any,
    other_tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    from tests.apps.datasets.helpers import deidentify
    from tests.apps.training.test_jobs import SPEC

    owner = await sync_to_async(member)(Role.OWNER, tenant=tenant)
    lab = await sync_to_async(member)(Role.OWNER, tenant=other_tenant)
    owner_client = await sync_to_async(api_client_for)(owner)

    def shared_job() -> tuple[int, int]:
        ds = create_dataset(owner_client, tenant.slug, "bc")
        raw = upload_version(owner_client, tenant.slug, ds, breast_cancer_csv(), label="target")
        deid = deidentify(owner_client, tenant.slug, ds, raw["id"], {"columns": {}, "quasi_identifiers": [], "k": None})
        r = owner_client.post(f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/grants/",
                              {"grantee": other_tenant.slug, "permission": "process"}, format="json")  # fmt: skip
        assert r.status_code == 201, r.content
        with tenant_scope(other_tenant.pk):
            job = services.job_create(tenant=other_tenant, created_by=None, name="shared",
                                      dataset_version_id=deid["id"], spec={**SPEC, "epochs": 1})  # fmt: skip
        return int(job.pk), int(r.json()["id"]), ds

    job_id, grant_id, ds = await sync_to_async(shared_job)()
    comm = await _open(asgi_app, lab)
    stream = f"tenants/{other_tenant.slug}/jobs/{job_id}"
    assert (await _subscribe(comm, stream))["type"] == "subscribed"

    def revoke() -> int:
        return int(owner_client.delete(f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/grants/{grant_id}/").status_code)

    assert await sync_to_async(revoke)() in (200, 204)
    msg, waited = await _until(comm, lambda m: m["type"] != "hello")
    assert msg == {"type": "unsubscribed", "stream": stream, "reason": "forbidden"} and waited < 2
    await comm.disconnect()


async def test_the_dataset_stream_shows_its_owner_versions_and_grants_live(
    asgi_app: Any,  # noqa: F811
    tenant: Any,
    other_tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    owner = await sync_to_async(member)(Role.OWNER, tenant=tenant)
    analyst = await sync_to_async(member)(Role.ANALYST, tenant=tenant)
    outsider = await sync_to_async(member)(Role.OWNER, tenant=other_tenant)
    client = await sync_to_async(api_client_for)(owner)
    ds = await sync_to_async(create_dataset)(client, tenant.slug, "bc")
    stream = f"tenants/{tenant.slug}/datasets/{ds}"
    comm = await _open(asgi_app, analyst)
    assert (await _subscribe(comm, stream))["seq"] == 0

    raw = await sync_to_async(upload_version)(client, tenant.slug, ds, breast_cancer_csv(), label="target")
    (up,) = await _events(comm, 1)
    assert (up["type"], up["seq"], up["prev"]) == ("dataset.version", 1, 0)
    data = up["payload"]["data"]
    assert data["version"] == raw["id"] and data["status"] == "ready" and data["kind"] == "raw"
    assert data["rows"] == 569 and data["columns"] == 31

    def grant() -> int:
        r = client.post(f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/grants/",
                        {"grantee": other_tenant.slug, "permission": "process"}, format="json")  # fmt: skip
        assert r.status_code == 201, r.content
        return int(r.json()["id"])

    grant_id = await sync_to_async(grant)()
    (g,) = await _events(comm, 1)
    assert g["type"] == "dataset.grant" and g["payload"]["data"]["grant"] == grant_id
    assert g["payload"]["data"]["status"] == "active" and g["payload"]["data"]["grantee"] == other_tenant.slug
    await comm.disconnect()
    # A grantee does not see the owner's ingest: like a missing dataset.
    comm = await _open(asgi_app, outsider)
    assert (await _subscribe(comm, stream))["code"] == "not_found"
    await comm.disconnect()


async def test_deleting_a_dataset_tells_its_stream_then_ends_it(
    asgi_app: Any,  # noqa: F811
    settings: Any,
    tenant: Any,
    other_tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    settings.COHORT_WS_RECHECK_SECONDS = 0.3
    owner = await sync_to_async(member)(Role.OWNER, tenant=tenant)
    client = await sync_to_async(api_client_for)(owner)
    ds = await sync_to_async(create_dataset)(client, tenant.slug, "to delete")

    def grant_then_delete() -> int:
        r = client.post(f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/grants/",
                        {"grantee": other_tenant.slug, "permission": "download"}, format="json")  # fmt: skip
        assert r.status_code == 201, r.content
        return int(client.delete(f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/").status_code)

    stream = f"tenants/{tenant.slug}/datasets/{ds}"
    comm = await _open(asgi_app, owner)
    await _subscribe(comm, stream)
    assert await sync_to_async(grant_then_delete)() in (200, 204)
    got = await _events(comm, 3)
    assert [(m["type"], m["payload"]["data"].get("status")) for m in got] == [
        ("dataset.grant", "active"), ("dataset.dataset", "deleted"), ("dataset.grant", "revoked")]  # fmt: skip
    msg, waited = await _until(comm, lambda m: m["type"] == "unsubscribed")
    assert msg["reason"] == "forbidden" and waited < 2
    assert (await _subscribe(comm, stream))["code"] == "not_found"  # as REST: a deleted dataset is gone
    await comm.disconnect()


async def test_the_activity_stream_numbers_by_the_audit_chain_and_resumes(
    asgi_app: Any,  # noqa: F811
    tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    owner = await sync_to_async(member)(Role.OWNER, tenant=tenant)
    auditor = await sync_to_async(member)(Role.AUDITOR, tenant=tenant)
    client = await sync_to_async(api_client_for)(owner)
    stream = f"tenants/{tenant.slug}/activity"
    comm = await _open(asgi_app, auditor)
    ack = await _subscribe(comm, stream, after=0)
    head = ack["seq"]
    replay = await _events(comm, head)
    assert [m["seq"] for m in replay] == list(range(1, head + 1))
    await sync_to_async(create_dataset)(client, tenant.slug, "activity")
    (live,) = await _events(comm, 1)
    assert live["type"] == "activity.event" and live["seq"] == head + 1 and live["prev"] == head
    assert live["payload"]["action"] == "dataset.created" and "details" not in live["payload"]
    await comm.disconnect()


async def test_too_far_behind_ends_the_subscription_for_a_resync_and_never_skips(
    asgi_app: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    from apps.common import socket as live_socket

    owner, job_id, total = await _owner_and_job(member, tenant, api_client_for)
    stream = f"tenants/{tenant.slug}/jobs/{job_id}"
    monkeypatch.setattr(live_socket, "REPLAY_MAX", 2)
    settings.COHORT_WS_RECHECK_SECONDS = 60  # only the next live event finds the gap here
    comm = await _open(asgi_app, owner)
    await _subscribe(comm, stream)
    # The socket handles one message at a time: the pong says the subscribe (its replay) is done, so
    # the events below are all live.
    await comm.send_json_to({"op": "ping", "id": "sync"})
    assert await comm.receive_json_from(timeout=5) == {"type": "pong", "id": "sync"}
    with mock.patch("apps.training.services.events.publish_job_event"):  # 4 events lost on the way
        for i in range(4):
            await sync_to_async(services._event)(job_id, tenant.pk, "log", {"line": f"lost {i}"})
    await sync_to_async(services._event)(job_id, tenant.pk, "log", {"line": "next"})
    got = [await comm.receive_json_from(timeout=5) for _ in range(3)]
    assert [(m.get("seq"), m.get("prev")) for m in got[:2]] == [(total + 1, total), (total + 2, total + 1)]
    assert got[2] == {"type": "unsubscribed", "stream": stream, "reason": "resync", "seq": total + 2}
    assert await comm.receive_nothing(timeout=0.3)  # the live event past the gap is not sent
    # Subscribing again with ``after`` goes on where it stopped (the client read the rest over REST).
    ack = await _subscribe(comm, stream, after=total + 4)
    assert ack["type"] == "subscribed"
    assert [(m["seq"], m["prev"]) for m in await _events(comm, 1)] == [(total + 5, total + 4)]
    await comm.disconnect()


async def test_a_message_without_its_group_reaches_no_subscription(
    asgi_app: Any,  # noqa: F811
    tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    from channels.layers import get_channel_layer

    from apps.training.live import job_group

    owner, job_id, _total = await _owner_and_job(member, tenant, api_client_for)
    comm = await _open(asgi_app, owner)
    await _subscribe(comm, f"tenants/{tenant.slug}/jobs/{job_id}")
    forged = {"seq": 10_000, "kind": "log", "step": 0, "epoch": 0, "payload": {"line": "x"}, "created_at": "t"}
    await get_channel_layer().group_send(job_group(tenant.pk, job_id), {"type": "job.event", "event": forged})
    assert await comm.receive_nothing(timeout=0.3)
    await comm.disconnect()


async def test_probing_other_tenants_closes_the_socket_after_20_refusals(
    asgi_app: Any,  # noqa: F811
    tenant: Any,
    member: Any,
) -> None:
    comm = await _open(asgi_app, await sync_to_async(member)(Role.ANALYST, tenant=tenant))
    for i in range(19):
        assert (await _subscribe(comm, f"tenants/victim-{i}/activity"))["code"] == "not_found"
    await comm.send_json_to({"op": "subscribe", "stream": "tenants/victim-last/activity"})
    assert (await comm.receive_json_from(timeout=5))["code"] == "not_found"
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 1008}


async def test_the_per_job_endpoint_survives_the_owners_dataset_events(
    asgi_app: Any,  # noqa: F811
    tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    """The per-job endpoint joins the dataset's group, where the owner's dataset stream's events
    travel too: it ignores them (it used to crash on a message type without a handler)."""
    from tests.apps.training.test_job_stream import _ws

    owner = await sync_to_async(member)(Role.OWNER, tenant=tenant)
    client = await sync_to_async(api_client_for)(owner)
    job_id = await sync_to_async(_finished_job)(tenant, client)
    total = await sync_to_async(_event_count)(tenant.pk, job_id)
    comm = await sync_to_async(_ws)(asgi_app, tenant.slug, job_id, owner)
    assert (await comm.connect(timeout=5))[0]
    assert len([await comm.receive_json_from(timeout=5) for _ in range(total)]) == total

    await sync_to_async(upload_version)(client, tenant.slug,
        await sync_to_async(lambda: _job_dataset(tenant.pk, job_id))(), breast_cancer_csv(), label="target")  # fmt: skip
    await sync_to_async(services._event)(job_id, tenant.pk, "log", {"line": "still here"})
    msg = await comm.receive_json_from(timeout=5)
    assert msg["seq"] == total + 1 and msg["event"]["payload"] == {"line": "still here"}
    await comm.disconnect()


def _job_dataset(tenant_id: int, job_id: int) -> int:
    from apps.training.models import TrainingJob

    with tenant_scope(tenant_id):
        return int(TrainingJob.objects.select_related("dataset_version").get(pk=job_id).dataset_version.dataset_id)


def test_session_live_follows_the_stored_session(tenant: Any, member: Any) -> None:
    """The recheck's look at a browser session: a live one holds; a deleted session, a password
    change (a new session auth hash) and a deactivated user each end it."""
    from django.contrib.sessions.models import Session

    from apps.common.socket import session_live

    user = member(Role.ANALYST, tenant=tenant)

    def fresh() -> str:
        c = Client()
        c.force_login(user)
        return c.cookies["sessionid"].value

    key = fresh()
    assert session_live(key, user) and not session_live(None, user) and not session_live("no-such-key", user)
    Session.objects.filter(session_key=key).delete()
    assert not session_live(key, user)
    key = fresh()
    user.set_password("a-new-correct-horse")
    user.save(update_fields=["password"])
    assert not session_live(key, user)
    key = fresh()
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert not session_live(key, user)


# --- the hot path: one encoding per process, no thread hop per event, one per recheck -----------------
@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize(
    ("event", "prev"),
    [
        (
            {"seq": 7, "type": "job.log", "time": "2026-12-07T10:00:00+00:00", "payload": {"line": 'héllo "x" \u2028'}},
            6,
        ),
        ({"seq": 1, "type": "activity.event", "time": "t", "payload": {"a": None, "b": [1, 2.5, True], "c": {}}}, 0),
    ],
)
def test_a_spliced_frame_is_the_json_send_json_wrote(event: dict[str, Any], prev: int) -> None:
    from apps.common.socket import Event, frame_parts

    e = Event(**event)
    head, tail = frame_parts("tenants/a/jobs/1", e)
    expected = json.dumps({"type": e.type, "stream": "tenants/a/jobs/1", "seq": e.seq, "prev": prev,
                           "time": e.time, "payload": e.payload})  # fmt: skip
    assert f"{head}{json.dumps(prev)}{tail}" == expected


@pytest.mark.django_db(transaction=False)
def test_the_frame_cache_encodes_a_message_once_per_stream_and_never_trusts_a_reused_id() -> None:
    from apps.common.socket import Event, _FrameCache, frame_parts

    cache = _FrameCache()
    message = {"type": "job.event", "event": {"seq": 3}}
    event = Event(3, "job.log", "t", {"line": "x"})
    with mock.patch("apps.common.socket.frame_parts", wraps=frame_parts) as encode:
        first = cache.parts(message, "tenants/a/jobs/1", event)
        assert cache.parts(message, "tenants/a/jobs/1", event) == first  # another socket: no encoding
        assert encode.call_count == 1
        cache.parts(message, "tenants/a/jobs/2", Event(3, "job.log", "t", {"line": "x"}))  # another stream
        assert encode.call_count == 2
        # An entry under this message's id whose message is another object (an id reused): encoded anew.
        other = {"type": "job.event", "event": {"seq": 9}}
        cache._frames[(id(other), "s")] = (message, "stale", "stale")
        assert cache.parts(other, "s", Event(9, "job.log", "t", {})) == frame_parts("s", Event(9, "job.log", "t", {}))
    for i in range(cache.SIZE + 10):  # bounded
        cache.parts({"i": i}, "s", event)
    assert len(cache._frames) == cache.SIZE


async def _drain(comm: WebsocketCommunicator, quiet: float = 0.5) -> list[dict[str, Any]]:
    """Every message until none comes for ``quiet`` seconds."""
    out: list[dict[str, Any]] = []
    while not await comm.receive_nothing(timeout=quiet):
        out.append(json.loads((await comm.receive_output(timeout=1))["text"]))
    return out


@pytest.fixture
def redis_asgi_app(settings: Any) -> Any:
    """The app on the Redis channel layer it is served with, under a prefix of its own: the in-memory
    layer copies a message per channel, so only this one shows what sockets of a process share."""
    import uuid

    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "apps.common.channel_layer.FanoutChannelLayer",
                                           "CONFIG": {"hosts": [settings.REDIS_URL],
                                                      "prefix": f"test-{uuid.uuid4().hex[:8]}"}}}  # fmt: skip
    channel_layers.backends.clear()
    from config.asgi import application

    yield application
    channel_layers.backends.clear()


async def test_sockets_of_one_process_get_one_encoding_of_an_event_with_their_own_prev(
    redis_asgi_app: Any,
    tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    """Two sockets on the activity stream, one resumed further back: the same frame but for
    ``prev``, encoded once (the Redis layer hands both the same message); no thread hop for it."""
    from apps.common import socket as live_socket

    owner = await sync_to_async(member)(Role.OWNER, tenant=tenant)
    client = await sync_to_async(api_client_for)(owner)
    stream = f"tenants/{tenant.slug}/activity"
    a, b = await _open(redis_asgi_app, owner), await _open(redis_asgi_app, owner)
    head = (await _subscribe(a, stream))["seq"]
    assert (await _subscribe(b, stream, after=head - 1))["seq"] == head
    await _events(b, 1)  # its replay of ``head``
    for comm in (a, b):  # the subscribes are done
        await comm.send_json_to({"op": "ping", "id": "sync"})
        assert await comm.receive_json_from(timeout=5) == {"type": "pong", "id": "sync"}
    hits = live_socket._frames.hits
    with mock.patch("channels.consumer.aclose_old_connections") as hop:
        for name in ("hot-path-1", "hot-path-2"):
            await sync_to_async(create_dataset)(client, tenant.slug, name)
        got_a, got_b = await _drain(a), await _drain(b)
    assert hop.call_count == 0  # channel-layer messages skip Channels' per-message thread hop
    seqs = [m["seq"] for m in got_a]
    assert len(seqs) >= 2 and seqs == list(range(head + 1, head + 1 + len(seqs))) == [m["seq"] for m in got_b]
    assert [m["prev"] for m in got_a] == [s - 1 for s in seqs] == [m["prev"] for m in got_b]
    assert [{**m, "prev": 0} for m in got_a] == [{**m, "prev": 0} for m in got_b]
    assert live_socket._frames.hits >= hits + len(seqs)  # the second socket reused each event's frame
    await a.disconnect()
    await b.disconnect()


async def test_the_recheck_reads_in_one_thread_hop(
    asgi_app: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    tenant: Any,
    member: Any,
    api_client_for: Any,
) -> None:
    from apps.common import socket as live_socket

    settings.COHORT_WS_RECHECK_SECONDS = 0.3
    owner, job_id, _total = await _owner_and_job(member, tenant, api_client_for)
    comm = await _open(asgi_app, owner)
    for stream in (f"tenants/{tenant.slug}/jobs/{job_id}", f"tenants/{tenant.slug}/activity"):
        assert (await _subscribe(comm, stream))["type"] == "subscribed"
    calls: list[str] = []
    real = live_socket._db

    def counting(fn: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return real(fn)

    monkeypatch.setattr(live_socket, "_db", counting)
    await comm.receive_nothing(timeout=1.0)  # at least two rechecks, nothing to send
    # Two rechecks or more, each one hop (a fill of what the stream got meanwhile may add its own).
    assert calls.count("_recheck_reads") >= 2 and set(calls) <= {"_recheck_reads", "_between_scoped"}, calls
    await comm.disconnect()
