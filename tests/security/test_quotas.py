"""API-7: per-tenant dataset quotas (ASVS 12.1.3): the number of live datasets and the bytes
stored, with per-tenant overrides (``apps.datasets.models.DatasetQuota``).

* count: with ``max_datasets=3``, the fourth create is 422 ``quota_exceeded`` (audited as
  ``dataset.quota_exceeded``); deleting one frees a slot; 8 threads creating at once (each its own
  API client and database connection) get at most the free slots;
* bytes: with ``max_bytes`` set, an upload session declaring more than the remaining bytes and a
  multipart upload larger than them are refused with 422 ``quota_exceeded`` and leave no version.

Per-tenant limits on concurrent jobs and GPU-seconds belong to the training work (not built yet).
Figures: reports/API-7.json.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections

from apps.datasets.models import Dataset, DatasetQuota, DatasetVersion
from apps.tenancy.models import Role
from apps.tenancy.scope import tenant_scope
from tests.apps.datasets.helpers import create_dataset, named, table_csv
from tests.conftest import write_report
from tests.security.helpers import admin_connect

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 8
MAX_DATASETS = 3


def _set_quota(tenant: Any, **fields: Any) -> None:
    with tenant_scope(tenant.pk):
        DatasetQuota.objects.update_or_create(tenant=tenant, defaults=fields)


def _live_datasets(tenant: Any) -> int:
    with tenant_scope(tenant.pk):
        return Dataset.objects.filter(status=Dataset.Status.ACTIVE).count()


def _quota_events(tenant: Any) -> int:
    with admin_connect() as su:
        return int(
            su.execute(
                "SELECT count(*) FROM audit_auditevent WHERE tenant_id = %s AND action = 'dataset.quota_exceeded'",
                [tenant.pk],
            ).fetchone()[0]
        )


def test_api7_dataset_and_byte_quotas(
    make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[[Any], Any]
) -> None:
    overruns: list[str] = []
    figures: dict[str, Any] = {}

    # Sequential: the count quota and its refusal.
    t = make_tenant()
    owner = member(Role.OWNER, tenant=t)
    client = api_client_for(owner)
    _set_quota(t, max_datasets=MAX_DATASETS)
    ids = [create_dataset(client, t.slug, f"q{i}") for i in range(MAX_DATASETS)]
    r = client.post(f"/api/v1/tenants/{t.slug}/datasets/", {"name": "one too many"}, format="json")
    code = r.json().get("error", {}).get("code") if r.status_code == 422 else None
    if r.status_code != 422 or code != "quota_exceeded":
        overruns.append(f"create past max_datasets -> {r.status_code} {code}")
    refused_events = _quota_events(t)
    assert client.delete(f"/api/v1/tenants/{t.slug}/datasets/{ids[0]}/").status_code == 200
    freed = client.post(f"/api/v1/tenants/{t.slug}/datasets/", {"name": "after delete"}, format="json").status_code
    figures["sequential"] = {
        "max_datasets": MAX_DATASETS,
        "fourth_create": r.status_code,
        "code": code,
        "quota_exceeded_events": refused_events,
        "create_after_delete": freed,
    }
    if refused_events != 1 or freed != 201:
        overruns.append(f"sequential: events {refused_events}, create after delete {freed}")

    # Concurrent: 8 creates at once against 3 free slots.
    tc = make_tenant()
    _set_quota(tc, max_datasets=MAX_DATASETS)
    clients = [api_client_for(member(Role.OWNER, tenant=tc)) for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS)
    results: list[Any] = [None] * THREADS

    def attempt(i: int) -> None:
        barrier.wait(timeout=60)
        try:
            r = clients[i].post(f"/api/v1/tenants/{tc.slug}/datasets/", {"name": f"race {i}"}, format="json")
            results[i] = (r.status_code, r.json().get("error", {}).get("code", ""))
        except Exception as exc:  # recorded and asserted below
            results[i] = (0, repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    outcomes = Counter(f"{s} {c}".strip() for s, c in (x or (0, "no result") for x in results))
    accepted = sum(1 for x in results if x and x[0] == 201)
    live = _live_datasets(tc)
    figures["concurrent"] = {
        "threads": THREADS,
        "max_datasets": MAX_DATASETS,
        "accepted": accepted,
        "live_datasets_after": live,
        "outcomes": dict(outcomes),
    }
    if accepted > MAX_DATASETS or live > MAX_DATASETS:
        overruns.append(f"concurrent: {accepted} creates accepted, {live} live, quota {MAX_DATASETS}")
    if any(x is None or x[0] not in (201, 422) for x in results):
        overruns.append(f"concurrent: unexpected outcomes {dict(outcomes)}")

    # Bytes: a declared size or a multipart file past the remaining bytes is refused.
    tb = make_tenant()
    bclient = api_client_for(member(Role.OWNER, tenant=tb))
    _set_quota(tb, max_bytes=4096)
    ds = create_dataset(bclient, tb.slug, "bytes")
    r = bclient.post(
        f"/api/v1/tenants/{tb.slug}/uploads/", {"dataset_id": ds, "filename": "a.csv", "size": 5000}, format="json"
    )
    session_code = r.json().get("error", {}).get("code") if r.status_code == 422 else None
    big = table_csv(200)
    assert len(big) > 4096
    r2 = bclient.post(f"/api/v1/tenants/{tb.slug}/datasets/{ds}/versions/", {"file": named(big)}, format="multipart")
    upload_code = r2.json().get("error", {}).get("code") if r2.status_code == 422 else None
    with tenant_scope(tb.pk):
        versions = DatasetVersion.objects.filter(dataset_id=ds).count()
        quota_bytes = DatasetQuota.objects.get(tenant=tb).max_bytes  # the quota in force, as stored
    figures["bytes"] = {
        "max_bytes": quota_bytes,
        "session_declaring_5000": [r.status_code, session_code],
        "multipart_bytes": len(big),
        "multipart_upload": [r2.status_code, upload_code],
        "versions_left": versions,
    }
    if session_code != "quota_exceeded":
        overruns.append(f"upload session past max_bytes -> {r.status_code}")
    if upload_code != "quota_exceeded" or versions:
        overruns.append(f"multipart upload past max_bytes -> {r2.status_code}, {versions} versions")

    figures["quota_overruns_accepted"] = len(overruns)
    figures["details"] = overruns
    figures["not_applicable_yet"] = "per-tenant concurrent jobs and GPU-seconds: no training jobs exist yet"
    write_report("API-7", figures, not overruns)
    assert not overruns, "\n".join(overruns)
