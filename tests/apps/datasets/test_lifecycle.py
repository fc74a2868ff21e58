"""Large uploads on a worker, retention purge, upload expiry, the privacy-budget ledger, immutable
versions, and S3-compatible storage."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any
from unittest.mock import patch

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.common import dispatch
from apps.datasets.models import BudgetReservation, Dataset, DatasetVersion, UploadPart, UploadSession
from apps.datasets.services import expire_uploads, purge_expired
from apps.tenancy.models import Role
from apps.tenancy.scope import platform_scope, tenant_scope
from tests.apps.datasets.helpers import create_dataset, deidentify, named, read_version, table_csv, upload_version


@pytest.fixture
def owner(tenant: Any, member: Callable[..., Any], api_client_for: Callable[..., Any]) -> Any:
    return api_client_for(member(Role.OWNER, tenant=tenant))


def _actions(tenant: Any) -> list[str]:
    with platform_scope():
        return list(AuditEvent.all_tenants.filter(tenant=tenant).values_list("action", flat=True))


@pytest.mark.django_db
def test_large_upload_is_processed_by_the_worker_task(
    tenant: Any, owner: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from apps.datasets.tasks import process_version

    ds = create_dataset(owner, tenant.slug, "big")
    sent: list[tuple[Any, ...]] = []
    with (
        patch.object(
            dispatch,
            "send",
            side_effect=lambda name, args=(), **kw: (
                sent.append(tuple(args)) if name == "datasets.process_version" else None
            ),
        ),
        override_settings(COHORT_DATASET_INLINE_MAX_BYTES=10),
        django_capture_on_commit_callbacks(execute=True),
    ):
        r = owner.post(
            f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/versions/",
            {"file": named(table_csv(50)), "label": "outcome"},
            format="multipart",
        )
        bad = owner.post(
            f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/versions/",
            {"file": named(b"a,b\n" + b"1,2\n" * 5 + b"3\n")},
            format="multipart",
        )
    assert r.status_code == 202 and r.json()["status"] == "processing", r.content
    assert bad.status_code == 202
    assert len(sent) == 2
    for args in sent:  # what the worker runs (same function as the Celery task body)
        process_version.run(*args)
        process_version.run(*args)  # a redelivered message is a no-op
    with tenant_scope(tenant.pk):
        good = DatasetVersion.objects.get(pk=r.json()["id"])
        failed = DatasetVersion.objects.get(pk=bad.json()["id"])
        assert good.status == "ready" and good.rows == 50
        assert failed.status == "failed" and failed.error["code"] == "ragged_rows" and failed.storage_name == ""
        assert UploadPart.objects.count() == 0
    assert _actions(tenant).count("dataset.upload_rejected") == 1


@pytest.mark.django_db
def test_delete_then_purge_after_retention(tenant: Any, owner: Any, settings: Any) -> None:
    import os

    ds = create_dataset(owner, tenant.slug, "to-delete")
    raw = upload_version(owner, tenant.slug, ds, table_csv(20), label="outcome")
    deidentify(owner, tenant.slug, ds, raw["id"])
    r = owner.delete(f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/")
    assert r.status_code == 200 and r.json()["status"] == "deleted"
    assert owner.get(f"/api/v1/tenants/{tenant.slug}/datasets/").json()["results"] == []
    with tenant_scope(tenant.pk):
        names = [v.storage_name for v in DatasetVersion.objects.filter(dataset_id=ds)]
    assert purge_expired() == 0  # retention not over yet
    assert all(os.path.exists(os.path.join(settings.COHORT_OBJECT_DIR, n)) for n in names)
    with tenant_scope(tenant.pk):
        Dataset.objects.filter(pk=ds).update(purge_after=timezone.now() - timedelta(seconds=1))
    assert purge_expired() == 1
    assert not any(os.path.exists(os.path.join(settings.COHORT_OBJECT_DIR, n)) for n in names)
    with tenant_scope(tenant.pk):
        assert {v.status for v in DatasetVersion.objects.filter(dataset_id=ds)} == {"purged"}
        assert Dataset.objects.get(pk=ds).status == "purged"
    assert "dataset.purged" in _actions(tenant)


@pytest.mark.django_db
def test_ready_versions_are_immutable_in_the_database(tenant: Any, owner: Any) -> None:
    from django.db import DatabaseError, transaction

    ds = create_dataset(owner, tenant.slug, "frozen")
    raw = upload_version(owner, tenant.slug, ds, table_csv(10), label="outcome")
    with tenant_scope(tenant.pk):
        for change in ({"rows": 1}, {"content_sha256": "0" * 64}, {"schema": {}}, {"status": "processing"}):
            with pytest.raises(DatabaseError, match="immutable"), transaction.atomic():
                DatasetVersion.objects.filter(pk=raw["id"]).update(**change)


@pytest.mark.django_db
def test_expired_upload_sessions_lose_their_chunks(tenant: Any, owner: Any) -> None:
    ds = create_dataset(owner, tenant.slug, "chunks")
    r = owner.post(
        f"/api/v1/tenants/{tenant.slug}/uploads/", {"dataset_id": ds, "filename": "x.csv", "size": 100}, format="json"
    )
    up = r.json()["id"]
    owner.put(
        f"/api/v1/tenants/{tenant.slug}/uploads/{up}/?offset=0", b"a" * 50, content_type="application/octet-stream"
    )
    with tenant_scope(tenant.pk):
        UploadSession.objects.filter(pk=up).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert expire_uploads() == 1
    with tenant_scope(tenant.pk):
        assert UploadPart.objects.count() == 0 and UploadSession.objects.get(pk=up).status == "expired"
    r = owner.put(
        f"/api/v1/tenants/{tenant.slug}/uploads/{up}/?offset=50", b"a" * 50, content_type="application/octet-stream"
    )
    assert r.status_code == 409


@pytest.mark.django_db
def test_budget_reserve_commit_release_and_refusal(tenant: Any, owner: Any) -> None:
    ds = create_dataset(owner, tenant.slug, "dp")
    base = f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/budget/"
    r = owner.put(base, {"epsilon": "3", "delta": "0.00001"}, format="json")
    assert r.status_code == 200 and r.json()["epsilon_remaining"] == "3.000000"
    r1 = owner.post(base + "reservations/", {"epsilon": "2", "delta": "0.000001", "purpose": "round 1"}, format="json")
    assert r1.status_code == 201
    r2 = owner.post(base + "reservations/", {"epsilon": "1.5", "delta": "0", "purpose": "round 2"}, format="json")
    assert r2.status_code == 422 and r2.json()["error"]["code"] == "budget_exceeded"
    assert r2.json()["error"]["details"]["epsilon_available"] == "1.000000"
    rid = r1.json()["id"]
    r = owner.post(base + f"reservations/{rid}/commit/", {"epsilon_spent": "2.5"}, format="json")
    assert r.status_code == 400  # cannot spend more than reserved
    r = owner.post(base + f"reservations/{rid}/commit/", {"epsilon_spent": "1.25"}, format="json")
    assert r.status_code == 200 and r.json()["state"] == "committed"
    assert owner.post(base + f"reservations/{rid}/release/", format="json").status_code == 409
    b = owner.get(base).json()
    assert (b["epsilon_spent"], b["epsilon_reserved"], b["epsilon_remaining"]) == ("1.250000", "0.000000", "1.750000")
    r3 = owner.post(base + "reservations/", {"epsilon": "1.5", "delta": "0", "purpose": "round 2"}, format="json")
    assert r3.status_code == 201
    assert owner.post(base + f"reservations/{r3.json()['id']}/release/", format="json").json()["state"] == "released"
    assert owner.put(base, {"epsilon": "1", "delta": "0.00001"}, format="json").status_code == 409  # below spent
    acts = _actions(tenant)
    for a in ("budget.set", "budget.reserved", "budget.refused", "budget.committed", "budget.released"):
        assert a in acts, a


@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_never_overspend(
    make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[..., Any]
) -> None:
    tenant = make_tenant()
    user = member(Role.OWNER, tenant=tenant)
    ds = create_dataset(api_client_for(user), tenant.slug, "dp-race")
    base = f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/budget/"
    api_client_for(user).put(base, {"epsilon": "5", "delta": "0.0001"}, format="json")
    codes: list[int] = []
    clients = [api_client_for(user) for _ in range(10)]

    def go(c: Any) -> None:
        codes.append(
            c.post(base + "reservations/", {"epsilon": "1", "delta": "0", "purpose": "race"}, format="json").status_code
        )
        connection.close()

    threads = [threading.Thread(target=go, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [201] * 5 + [422] * 5, codes
    with platform_scope():
        total = sum((r.epsilon for r in BudgetReservation.all_tenants.filter(budget__dataset_id=ds)), Decimal(0))
    assert total == Decimal(5)


@pytest.mark.django_db
def test_s3_compatible_storage(tenant: Any, owner: Any, settings: Any) -> None:
    """The same flow against S3 (moto's in-process S3): objects land encrypted in the bucket."""
    import boto3
    from django.core.files.storage import storages
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="cohort-test")
        settings.STORAGES = {
            **settings.STORAGES,
            "objects": {
                "BACKEND": "storages.backends.s3.S3Storage",
                "OPTIONS": {
                    "bucket_name": "cohort-test",
                    "location": "t",
                    "file_overwrite": False,
                    "region_name": "us-east-1",
                    "access_key": "x",
                    "secret_key": "y",
                },
            },
        }
        storages._storages.pop("objects", None)
        try:
            ds = create_dataset(owner, tenant.slug, "on-s3")
            raw = upload_version(owner, tenant.slug, ds, table_csv(25, canary="S3CANARYVALUE"), label="outcome")
            keys = [
                o["Key"]
                for o in boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket="cohort-test")["Contents"]
            ]
            assert keys and all(k.startswith("t/") and k.endswith(".enc") for k in keys)
            body = b"".join(
                boto3.client("s3", region_name="us-east-1").get_object(Bucket="cohort-test", Key=k)["Body"].read()
                for k in keys
            )
            assert b"S3CANARYVALUE" not in body
            with tenant_scope(tenant.pk):
                v = DatasetVersion.objects.get(pk=raw["id"])
            assert b"S3CANARYVALUE" in read_version(v)
        finally:
            storages._storages.pop("objects", None)


@pytest.mark.django_db
def test_large_deidentification_runs_on_the_worker(
    tenant: Any, owner: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from apps.datasets.tasks import deidentify_version

    ds = create_dataset(owner, tenant.slug, "big-deid")
    raw = upload_version(owner, tenant.slug, ds, table_csv(40), label="outcome")
    sent: list[tuple[Any, ...]] = []
    with (
        patch.object(
            dispatch,
            "send",
            side_effect=lambda name, args=(), **kw: (
                sent.append(tuple(args)) if name == "datasets.deidentify_version" else None
            ),
        ),
        override_settings(COHORT_DATASET_INLINE_MAX_BYTES=10),
        django_capture_on_commit_callbacks(execute=True),
    ):
        r = owner.post(
            f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/versions/{raw['id']}/deidentify/",
            {"policy": {"columns": {"name": {"action": "drop", "params": {}}}}},
            format="json",
        )
    assert r.status_code == 202 and r.json()["status"] == "processing", r.content
    assert len(sent) == 1
    deidentify_version.run(*sent[0])
    deidentify_version.run(*sent[0])  # redelivery: no-op
    with tenant_scope(tenant.pk):
        v = DatasetVersion.objects.get(pk=r.json()["id"])
    assert v.status == "ready" and v.rows == 40 and "name" not in [c["name"] for c in v.schema["columns"]]
    acts = _actions(tenant)
    assert acts.count("dataset.deidentify_started") == 1 and acts.count("dataset.deidentified") == 1
