"""The live job stream: replay after a sequence number, live events in order, tenant isolation."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from apps.tenancy.models import Role
from apps.tenancy.scope import tenant_scope
from apps.training import services
from tests.apps.datasets.helpers import create_dataset, deidentify, upload_version
from tests.apps.training.test_jobs import SPEC, breast_cancer_csv

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def asgi_app(settings: Any) -> Any:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    from config.asgi import application

    return application


def _ws(app: Any, slug: str, job_id: int, user: Any, query: str = "") -> WebsocketCommunicator:
    c = Client()
    c.force_login(user)
    headers = [
        (b"origin", b"http://127.0.0.1:8000"),
        (b"host", b"127.0.0.1:8000"),
        (b"cookie", f"sessionid={c.cookies['sessionid'].value}".encode()),
    ]
    return WebsocketCommunicator(app, f"/ws/v1/tenants/{slug}/jobs/{job_id}/{query}", headers=headers)


def _finished_job(tenant: Any, owner_client: Any) -> int:
    ds = create_dataset(owner_client, tenant.slug, "bc")
    raw = upload_version(owner_client, tenant.slug, ds, breast_cancer_csv(), label="target")
    deid = deidentify(owner_client, tenant.slug, ds, raw["id"], {"columns": {}, "quasi_identifiers": [], "k": None})
    with tenant_scope(tenant.pk):
        job = services.job_create(
            tenant=tenant, created_by=None, name="bc", dataset_version_id=deid["id"], spec={**SPEC, "epochs": 2}
        )
    assert services.run_job(tenant.pk, job.pk) == "succeeded"
    return int(job.pk)


def _event_count(tenant_id: int, job_id: int) -> int:
    from apps.training.models import JobEvent

    with tenant_scope(tenant_id):
        return JobEvent.objects.filter(job_id=job_id).count()


async def test_replay_live_and_isolation(
    asgi_app: Any, tenant: Any, other_tenant: Any, member: Any, api_client_for: Any
) -> None:
    owner = await sync_to_async(member)(Role.OWNER, tenant=tenant)
    auditor = await sync_to_async(member)(Role.AUDITOR, tenant=tenant)
    outsider = await sync_to_async(member)(Role.OWNER, tenant=other_tenant)
    job_id = await sync_to_async(_finished_job)(tenant, await sync_to_async(api_client_for)(owner))

    comm = await sync_to_async(_ws)(asgi_app, tenant.slug, job_id, auditor)
    connected, _ = await comm.connect(timeout=5)
    assert connected
    total = await sync_to_async(_event_count)(tenant.pk, job_id)
    seqs = [(await comm.receive_json_from(timeout=5))["seq"] for _ in range(total)]
    assert seqs and seqs == list(range(1, len(seqs) + 1))
    # A new event is pushed live with the next sequence number.
    await sync_to_async(services._event)(job_id, tenant.pk, "log", {"line": "hello"})
    msg = await comm.receive_json_from(timeout=5)
    assert msg["seq"] == seqs[-1] + 1 and msg["event"]["payload"] == {"line": "hello"}
    await comm.disconnect()

    later = await sync_to_async(_ws)(asgi_app, tenant.slug, job_id, owner, "?after=3")
    assert (await later.connect(timeout=5))[0]
    assert (await later.receive_json_from(timeout=5))["seq"] == 4
    await later.disconnect()

    for slug in (tenant.slug, other_tenant.slug):
        bad = await sync_to_async(_ws)(asgi_app, slug, job_id, outsider)
        connected, code = await bad.connect(timeout=5)
        assert not connected and code == 4404
