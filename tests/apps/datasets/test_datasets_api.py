"""The dataset life cycle through the REST API, as an owner and as a partner tenant:
upload → validation and PII reports → policy → de-identified version → grant → use without read."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq
import pytest

from apps.audit.models import AuditEvent
from apps.datasets.models import Dataset, DatasetVersion, UploadPart
from apps.tenancy.models import Role
from apps.tenancy.scope import platform_scope

pytestmark = pytest.mark.django_db


def clinical_csv(rows: int = 60) -> bytes:
    """A small clinical table with direct identifiers, quasi-identifiers and free-text notes."""
    first = ["James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Sarah"]
    last = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Wilson", "Taylor"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["patient_id", "name", "email", "phone", "dob", "postcode", "age", "sex", "notes", "outcome"])
    for i in range(rows):
        fn, ln = first[i % 10], last[(i * 3) % 10]
        w.writerow(
            [
                f"P{10000 + i}",
                f"{fn} {ln}",
                f"{fn.lower()}.{ln.lower()}{i}@example.com",
                f"07700 900{i:03d}",
                f"19{50 + i % 40}-0{1 + i % 9}-1{i % 9}",
                f"SW1A {1 + i % 9}AA",
                30 + i % 40,
                "F" if i % 2 else "M",
                f"Seen by Dr {ln}. Patient {fn} {ln} called from 07700 900{i:03d} about results.",
                i % 2,
            ]
        )
    return buf.getvalue().encode()


def upload(client: Any, slug: str, ds_id: int, data: bytes, name: str = "clinic.csv", **opts: Any) -> Any:
    return client.post(
        f"/api/v1/tenants/{slug}/datasets/{ds_id}/versions/",
        {"file": _named(data, name), **opts},
        format="multipart",
    )


def _named(data: bytes, name: str) -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


@pytest.fixture
def owner_client(tenant: Any, member: Callable[..., Any], api_client_for: Callable[..., Any]) -> Any:
    return api_client_for(member(Role.OWNER, tenant=tenant))


def create_dataset(client: Any, slug: str, name: str = "Cardiology 2026") -> int:
    r = client.post(f"/api/v1/tenants/{slug}/datasets/", {"name": name, "description": "outcomes"}, format="json")
    assert r.status_code == 201, r.content
    return int(r.json()["id"])


def test_owner_uploads_reviews_reports_applies_policy_and_grants_process(
    tenant: Any,
    other_tenant: Any,
    member: Callable[..., Any],
    api_client_for: Callable[..., Any],
    owner_client: Any,
) -> None:
    slug = tenant.slug
    ds_id = create_dataset(owner_client, slug)
    r = upload(owner_client, slug, ds_id, clinical_csv(), label="outcome")
    assert r.status_code == 201, r.content
    raw = r.json()
    assert raw["kind"] == "raw" and raw["status"] == "ready" and raw["rows"] == 60
    assert raw["schema"]["label"] == "outcome"
    assert raw["validation"]["rows"] == 60
    cols = {c["name"]: c for c in raw["schema"]["columns"]}
    assert cols["age"]["type"] == "integer" and cols["dob"]["type"] == "date"
    # Upload parts (staging) are gone once the version is ready.
    with platform_scope():
        assert UploadPart.all_tenants.filter(tenant=tenant).count() == 0

    pii = owner_client.get(f"/api/v1/tenants/{slug}/datasets/{ds_id}/versions/{raw['id']}/pii-report/").json()
    report = pii["report"]["columns"]
    assert report["email"]["detections"].get("email", 0) > 0
    assert report["phone"]["detections"].get("phone", 0) > 0
    assert report["notes"]["detections"], report["notes"]
    body = str(pii)
    assert "james.smith0@example.com" not in body and "07700 900000" not in body  # masked examples only

    policy = {
        "columns": {
            "patient_id": {"action": "pseudonymise", "params": {}},
            "name": {"action": "drop", "params": {}},
            "email": {"action": "drop", "params": {}},
            "phone": {"action": "mask", "params": {"keep_last": 2}},
            "dob": {"action": "generalise", "params": {"to": "year"}},
            "postcode": {"action": "generalise", "params": {"prefix": "outward"}},
            "notes": {"action": "redact", "params": {"kinds": "all"}},
        },
        "quasi_identifiers": ["dob", "sex"],
        "k": 2,
    }
    r = owner_client.post(
        f"/api/v1/tenants/{slug}/datasets/{ds_id}/versions/{raw['id']}/deidentify/", {"policy": policy}, format="json"
    )
    assert r.status_code == 201, r.content
    deid = r.json()
    assert deid["kind"] == "deidentified" and deid["source_version"] == raw["id"]
    assert deid["deid_report"]["k_anonymity"]["k_achieved"] >= 2
    names = [c["name"] for c in deid["schema"]["columns"]]
    assert "name" not in names and "email" not in names

    prev = owner_client.get(f"/api/v1/tenants/{slug}/datasets/{ds_id}/versions/{deid['id']}/preview/?rows=5").json()
    flat = str(prev["rows"])
    assert "@example.com" not in flat and "Smith" not in flat
    dl = owner_client.get(f"/api/v1/tenants/{slug}/datasets/{ds_id}/versions/{deid['id']}/download/")
    assert dl.status_code == 200
    table = pq.read_table(io.BytesIO(b"".join(dl.streaming_content)))
    assert table.num_rows == deid["rows"]
    tokens = table.column("patient_id").to_pylist()
    assert all(t.startswith("tok_") for t in tokens if t)

    # Grant process to the partner: it sees the schema and safe statistics, never reads rows.
    r = owner_client.post(
        f"/api/v1/tenants/{slug}/datasets/{ds_id}/grants/",
        {"grantee": other_tenant.slug, "permission": "process"},
        format="json",
    )
    assert r.status_code == 201, r.content
    partner = api_client_for(member(Role.ANALYST, tenant=other_tenant))
    pslug = other_tenant.slug
    listed = partner.get(f"/api/v1/tenants/{pslug}/shared-datasets/").json()["results"]
    assert [d["id"] for d in listed] == [ds_id]
    detail = partner.get(f"/api/v1/tenants/{pslug}/shared-datasets/{ds_id}/").json()
    assert detail["permissions"] == ["process"] and detail["version"]["id"] == deid["id"]
    # Safe-by-construction statistics only (docs/datasets.md): schema, rows, rounded null fractions,
    # class counts below k suppressed; never a minimum, maximum, mean or std (one patient's value).
    stats = detail["version"]["statistics"]
    assert stats["rows"] == deid["rows"] and sum(n for n in stats["class_counts"].values() if n) == deid["rows"]
    by_name = {c["name"]: c for c in stats["columns"]}
    assert set(by_name) == {c["name"] for c in deid["schema"]["columns"]}
    assert set(by_name["age"]) == {"name", "type", "role", "null_fraction"}
    assert set(by_name["notes"]) == {"name", "type", "role", "null_fraction"}
    assert partner.get(f"/api/v1/tenants/{pslug}/shared-datasets/{ds_id}/preview/").status_code == 403
    assert partner.get(f"/api/v1/tenants/{pslug}/shared-datasets/{ds_id}/download/").status_code == 403
    # The owner's own routes stay closed to the partner.
    assert partner.get(f"/api/v1/tenants/{slug}/datasets/{ds_id}/").status_code == 404
    # Grantees do not reserve budget through the API: the platform does, when their job starts.
    r = partner.post(
        f"/api/v1/tenants/{pslug}/datasets/{ds_id}/budget/reservations/",
        {"epsilon": "1.5", "delta": "0.0000001", "purpose": "federated round 1"},
        format="json",
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "platform_reservation_only", r.content
    r = owner_client.post(
        f"/api/v1/tenants/{slug}/datasets/{ds_id}/budget/reservations/",
        {"epsilon": "1.5", "delta": "0.0000001", "purpose": "own study"},
        format="json",
    )
    assert r.status_code == 201, r.content
    budget = owner_client.get(f"/api/v1/tenants/{slug}/datasets/{ds_id}/budget/").json()
    assert budget["epsilon_reserved"] == "1.500000"

    with platform_scope():
        actions = list(AuditEvent.all_tenants.filter(tenant=tenant).values_list("action", flat=True))
    for a in (
        "dataset.created",
        "dataset.version_uploaded",
        "dataset.deidentified",
        "dataset.previewed",
        "dataset.downloaded",
        "grant.created",
        "budget.reserved",
    ):
        assert a in actions, a


def test_bad_file_is_rejected_with_reason_and_leaves_nothing(tenant: Any, owner_client: Any) -> None:
    slug = tenant.slug
    ds_id = create_dataset(owner_client, slug)
    ragged = b"a,b,c\n1,2,3\n4,5\n6,7,8,9\n"
    r = upload(owner_client, slug, ds_id, ragged)
    assert r.status_code == 422, r.content
    err = r.json()["error"]
    assert err["code"] == "ragged_rows" and err["details"]["count"] == 2
    r = upload(owner_client, slug, ds_id, b"")
    assert r.status_code == 422 and r.json()["error"]["code"] == "empty_file"
    r = upload(owner_client, slug, ds_id, b"x,y\n1,2\n", label="nope")
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_label_column"
    with platform_scope():
        assert DatasetVersion.all_tenants.filter(tenant=tenant).count() == 0
        assert UploadPart.all_tenants.filter(tenant=tenant).count() == 0
        failures = AuditEvent.all_tenants.filter(tenant=tenant, action="dataset.upload_rejected")
        assert failures.count() == 3
        assert {e.outcome for e in failures} == {"error"}
    import os

    from django.conf import settings

    stored = [
        f
        for _root, _dirs, files in os.walk(settings.COHORT_OBJECT_DIR)
        for f in files
        if f"/t{tenant.pk}/" in os.path.join(_root, f) + "/"
    ]
    assert stored == []


def test_resumable_upload_resumes_and_checks_sha256(tenant: Any, owner_client: Any) -> None:
    slug = tenant.slug
    ds_id = create_dataset(owner_client, slug)
    data = clinical_csv(200)
    r = owner_client.post(
        f"/api/v1/tenants/{slug}/uploads/",
        {"dataset_id": ds_id, "filename": "big.csv", "size": len(data), "options": {"label": "outcome"}},
        format="json",
    )
    assert r.status_code == 201, r.content
    up = r.json()["id"]
    half = len(data) // 2
    r = owner_client.put(
        f"/api/v1/tenants/{slug}/uploads/{up}/?offset=0", data[:half], content_type="application/octet-stream"
    )
    assert r.status_code == 200, r.content
    assert r.json()["received"] == [[0, half]]
    # "Dropped connection": completing now names the missing range.
    r = owner_client.post(f"/api/v1/tenants/{slug}/uploads/{up}/complete/", {"sha256": "0" * 64}, format="json")
    assert r.status_code == 409 and r.json()["error"]["details"]["missing"] == [[half, len(data)]]
    # Resume: ask what arrived, send the rest (with Content-Range), retry a chunk (idempotent).
    assert owner_client.get(f"/api/v1/tenants/{slug}/uploads/{up}/").json()["received_bytes"] == half
    r = owner_client.put(
        f"/api/v1/tenants/{slug}/uploads/{up}/",
        data[half:],
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes {half}-{len(data) - 1}/{len(data)}",
    )
    assert r.status_code == 200, r.content
    r = owner_client.put(
        f"/api/v1/tenants/{slug}/uploads/{up}/?offset=0", data[:half], content_type="application/octet-stream"
    )
    assert r.status_code == 200
    r = owner_client.put(
        f"/api/v1/tenants/{slug}/uploads/{up}/?offset=0", b"x" * half, content_type="application/octet-stream"
    )
    assert r.status_code == 409
    r = owner_client.post(f"/api/v1/tenants/{slug}/uploads/{up}/complete/", {"sha256": "1" * 64}, format="json")
    assert r.status_code == 422 and r.json()["error"]["code"] == "checksum_mismatch"
    # The session's parts are dropped with the failed attempt: nothing partial is kept.
    with platform_scope():
        assert UploadPart.all_tenants.filter(tenant=tenant).count() == 0
    # A fresh session with the right digest succeeds.
    r = owner_client.post(
        f"/api/v1/tenants/{slug}/uploads/",
        {"dataset_id": ds_id, "filename": "big.csv", "size": len(data), "options": {"label": "outcome"}},
        format="json",
    )
    up = r.json()["id"]
    for off in range(0, len(data), 4096):
        chunk = data[off : off + 4096]
        assert (
            owner_client.put(
                f"/api/v1/tenants/{slug}/uploads/{up}/?offset={off}", chunk, content_type="application/octet-stream"
            ).status_code
            == 200
        )
    r = owner_client.post(
        f"/api/v1/tenants/{slug}/uploads/{up}/complete/", {"sha256": hashlib.sha256(data).hexdigest()}, format="json"
    )
    assert r.status_code == 201, r.content
    assert r.json()["rows"] == 200 and r.json()["upload_sha256"] == hashlib.sha256(data).hexdigest()


def test_quota_on_dataset_count_and_bytes(tenant: Any, owner_client: Any) -> None:
    from apps.datasets.models import DatasetQuota
    from apps.tenancy.scope import tenant_scope

    with tenant_scope(tenant.pk):
        DatasetQuota.objects.create(tenant=tenant, max_datasets=1, max_bytes=1000)
    slug = tenant.slug
    ds_id = create_dataset(owner_client, slug, "first")
    r = owner_client.post(f"/api/v1/tenants/{slug}/datasets/", {"name": "second"}, format="json")
    assert r.status_code == 422 and r.json()["error"]["code"] == "quota_exceeded"
    r = owner_client.post(
        f"/api/v1/tenants/{slug}/uploads/", {"dataset_id": ds_id, "filename": "x.csv", "size": 5000}, format="json"
    )
    assert r.status_code == 422 and r.json()["error"]["details"]["quota"] == "bytes"
    with platform_scope():
        assert Dataset.all_tenants.filter(tenant=tenant).count() == 1


def _png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_image_zip_dataset_uploads_publishes_previews_and_downloads(tenant: Any, owner_client: Any) -> None:
    import zipfile

    slug = tenant.slug
    ds_id = create_dataset(owner_client, slug, "X-rays")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(6):
            zf.writestr(f"img/{i}.png", _png((i * 40, 0, 0)))
        zf.writestr("labels.csv", "file,label\n" + "".join(f"img/{i}.png,{'ab'[i % 2]}\n" for i in range(6)))
    r = upload(owner_client, slug, ds_id, buf.getvalue(), name="xrays.zip")
    assert r.status_code == 201, r.content
    raw = r.json()
    assert raw["format"] == "zip" and raw["rows"] == 6 and raw["schema"]["task"] == "image_classification"
    bad = owner_client.post(
        f"/api/v1/tenants/{slug}/datasets/{ds_id}/versions/{raw['id']}/deidentify/",
        {"policy": {"columns": {"image": {"action": "drop", "params": {}}}}},
        format="json",
    )
    assert bad.status_code == 400
    r = owner_client.post(
        f"/api/v1/tenants/{slug}/datasets/{ds_id}/versions/{raw['id']}/deidentify/",
        {"policy": {"columns": {}, "quasi_identifiers": [], "k": None}},
        format="json",
    )
    assert r.status_code == 201, r.content
    pub = r.json()
    assert pub["kind"] == "deidentified" and pub["format"] == "zip" and pub["content_sha256"] == raw["content_sha256"]
    prev = owner_client.get(f"/api/v1/tenants/{slug}/datasets/{ds_id}/versions/{pub['id']}/preview/?rows=3").json()
    assert prev["columns"] == ["image", "label"] and prev["rows"][0] == ["img/0.png", "a"]
    dl = owner_client.get(f"/api/v1/tenants/{slug}/datasets/{ds_id}/versions/{pub['id']}/download/")
    assert dl["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(b"".join(dl.streaming_content))) as zf:
        assert len([n for n in zf.namelist() if n.endswith(".png")]) == 6


def test_owner_confirms_the_inferred_schema_when_publishing(tenant: Any, owner_client: Any) -> None:
    slug = tenant.slug
    ds_id = create_dataset(owner_client, slug, "confirm")
    raw = upload(owner_client, slug, ds_id, clinical_csv(40)).json()  # no label given: nothing inferred as label
    url = f"/api/v1/tenants/{slug}/datasets/{ds_id}/versions/{raw['id']}/deidentify/"
    policy = {
        "columns": {
            "name": {"action": "drop", "params": {}},
            "email": {"action": "drop", "params": {}},
            "notes": {"action": "drop", "params": {}},
            "phone": {"action": "drop", "params": {}},
            "patient_id": {"action": "pseudonymise", "params": {}},
        }
    }
    bad = owner_client.post(url, {"policy": policy, "schema": {"label": "nope"}}, format="json")
    assert bad.status_code == 400 and "schema.label" in bad.json()["error"]["fields"]
    r = owner_client.post(
        url,
        {
            "policy": policy,
            "schema": {
                "label": "outcome",
                "task": "binary_classification",
                "roles": {"age": "quasi_identifier", "sex": "quasi_identifier"},
            },
        },
        format="json",
    )
    assert r.status_code == 201, r.content
    schema = r.json()["schema"]
    roles = {c["name"]: c["role"] for c in schema["columns"]}
    assert schema["label"] == "outcome" and schema["task"] == "binary_classification"
    assert roles["outcome"] == "label" and roles["age"] == "quasi_identifier" and roles["patient_id"] == "identifier"
