"""Regression tests for the findings of probing the running API from outside (issue 10 §6):
NUL characters in text input, model parameters validated only on the worker, exact extremes shown
to grantees, grantees reserving any ε, and upload chunks past the declared size."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rest_framework.test import APIClient

from apps.audit.models import AuditEvent
from apps.common.exceptions import Unprocessable
from apps.datasets import selectors, services
from apps.datasets.models import BudgetReservation, Dataset, DatasetVersion, UploadPart
from apps.tenancy.models import Role
from apps.tenancy.scope import tenant_scope
from tests.apps.datasets.helpers import create_dataset, deidentify, named, table_csv, upload_version
from tests.security.helpers import assert_error_shape

pytestmark = pytest.mark.django_db

NUL_MESSAGE = "NUL characters (U+0000) are not allowed."


@pytest.fixture
def owner(tenant: Any, member: Callable[..., Any], api_client_for: Callable[[Any], APIClient]) -> APIClient:
    return api_client_for(member(Role.OWNER, tenant=tenant))


def _base(tenant: Any) -> str:
    return f"/api/v1/tenants/{tenant.slug}/"


# --- 1. NUL in text input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "query", "field"),
    [
        ("datasets/", "q=%00", "q"),
        ("models/", "name=%00", "name"),
        ("datasets/", "q=ok&status=act%00ive", "status"),
        ("shared-datasets/", "q=a%00b", "q"),
        ("datasets/", "x%00y=1", "x\\u0000y"),
    ],
)
def test_nul_in_a_query_parameter_is_a_400_naming_it(
    suffix: str, query: str, field: str, tenant: Any, owner: APIClient
) -> None:
    r = owner.get(f"{_base(tenant)}{suffix}?{query}")
    error = assert_error_shape(r, 400, fields=[field])
    assert error["code"] == "validation_error" and error["fields"][field] == [NUL_MESSAGE]


def test_nul_in_a_query_outside_a_route_is_still_a_400(owner: APIClient) -> None:
    # Before routing: the answer does not depend on whether the route exists.
    assert_error_shape(owner.get("/api/v1/no-such-route/?q=%00"), 400, fields=["q"])


@pytest.mark.parametrize(
    ("suffix", "body", "field"),
    [
        ("datasets/", {"name": "ab\u0000"}, "name"),
        (
            "uploads/",
            {"dataset_id": 1, "filename": "a.csv", "size": 10, "options": {"label": "y\u0000"}},
            "options.label",
        ),
        ("uploads/", {"dataset_id": 1, "filename": "a\u0000.csv", "size": 10}, "filename"),
        ("uploads/", {"dataset_id": 1, "filename": "a.csv", "size": 10, "options": {"k\u0000": 1}}, "options.k\\u0000"),
        (
            "jobs/",
            {"name": "j", "dataset_version": 1, "spec": {"model": {"name": "mlp", "params": {"x": ["ok", "b\u0000"]}}}},
            "spec.model.params.x[1]",
        ),
    ],
)
def test_nul_anywhere_in_a_json_body_is_a_400_with_its_path(
    suffix: str, body: dict[str, Any], field: str, tenant: Any, owner: APIClient
) -> None:
    r = owner.post(_base(tenant) + suffix, body, format="json")
    error = assert_error_shape(r, 400, fields=[field])
    assert error["fields"][field] == [NUL_MESSAGE]


def test_nul_in_a_multipart_field_is_a_400_and_a_file_name_loses_it(tenant: Any, owner: APIClient) -> None:
    ds = create_dataset(owner, tenant.slug, "nul-multipart")
    url = f"{_base(tenant)}datasets/{ds}/versions/"
    r = owner.post(url, {"file": named(table_csv(12)), "label": "out\u0000come"}, format="multipart")
    assert_error_shape(r, 400, fields=["label"])
    with tenant_scope(tenant.pk):
        assert not DatasetVersion.objects.filter(dataset_id=ds).exists()
    # File names: Django's multipart parser drops non-printable characters (the parser's own check
    # stands behind it), so the stored name is clean.
    r = owner.post(url, {"file": named(table_csv(12), "bad\u0000.csv")}, format="multipart")
    assert r.status_code == 201, r.content
    assert r.json()["original_filename"] == "bad.csv"


def test_binary_upload_chunks_may_hold_nul_bytes(tenant: Any, owner: APIClient) -> None:
    ds = create_dataset(owner, tenant.slug, "nul-binary")
    chunk = b"\x00\x01\x00binary\x00"
    r = owner.post(
        _base(tenant) + "uploads/", {"dataset_id": ds, "filename": "blob.parquet", "size": len(chunk)}, format="json"
    )
    assert r.status_code == 201, r.content
    up = r.json()["id"]
    r = owner.put(f"{_base(tenant)}uploads/{up}/?offset=0", chunk, content_type="application/octet-stream")
    assert r.status_code == 200, r.content
    assert r.json()["received"] == [[0, len(chunk)]]


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _upload_rejected(owner: APIClient, tenant: Any, ds: int, data: bytes, name: str, code: str) -> dict[str, Any]:
    r = owner.post(f"{_base(tenant)}datasets/{ds}/versions/", {"file": named(data, name)}, format="multipart")
    assert r.status_code == 422, r.content
    body = r.json()["error"]
    assert body["code"] == code, body
    return dict(body)


def test_nul_in_file_cells_or_column_names_rejects_the_upload(tenant: Any, owner: APIClient) -> None:
    """Cells and column names become metadata (schema, class counts, reports) in jsonb: a NUL is
    refused with ``nul_character`` and its position, never a 500, and the refusal is recorded."""
    ds = create_dataset(owner, tenant.slug, "nul-ingest")
    rows = [{"a": i, "label": "x" if i % 2 else "y"} for i in range(20)]
    rows[7]["label"] = "x\u0000y"
    err = _upload_rejected(owner, tenant, ds, _jsonl(rows), "cells.jsonl", "nul_character")
    assert err["details"] == {"column": "label", "line": 8}

    keyed = [{"a\u0000b": i, "label": i % 2} for i in range(20)]
    err = _upload_rejected(owner, tenant, ds, _jsonl(keyed), "names.jsonl", "nul_character")
    assert err["details"] == {"column_positions": [1]}

    buf = io.BytesIO()
    pq.write_table(pa.table({"v": list(range(10)), "cls": ["a", "b\x00", *["a"] * 8]}), buf)
    err = _upload_rejected(owner, tenant, ds, buf.getvalue(), "cells.parquet", "nul_character")
    assert err["details"] == {"column": "cls", "record": 2}

    with tenant_scope(tenant.pk):
        assert not DatasetVersion.objects.filter(dataset_id=ds, status=DatasetVersion.Status.READY).exists()
        events = AuditEvent.objects.filter(tenant=tenant, action="dataset.upload_rejected").order_by("id")
        details = [json.loads(e.details) if isinstance(e.details, str) else e.details for e in events]
        codes = [d.get("code") for d in details]
    assert codes[-3:] == ["nul_character"] * 3


# --- 2. model parameters validated at job creation ------------------------------------------------


@pytest.mark.parametrize(
    ("model", "params", "fields"),
    [
        ("mlp", {"hidden": ["abc"]}, ["spec.model.params.hidden[0]"]),
        ("mlp", {"nope": 1}, ["spec.model.params.nope"]),
        ("mlp", {"hidden": [100000]}, ["spec.model.params.hidden[0]"]),
        ("mlp", {"hidden": [8, "x", 0]}, ["spec.model.params.hidden[1]", "spec.model.params.hidden[2]"]),
        ("mlp", {"dropout": True}, ["spec.model.params.dropout"]),
        ("mlp", {"hidden": "64"}, ["spec.model.params.hidden"]),
        ("logistic_regression", {"c": 1.0}, ["spec.model.params.c"]),
        ("cnn_small", {"width": 10**9}, ["spec.model.params.width"]),
        ("text_bag", {"dim": 1.5}, ["spec.model.params.dim"]),
        ("text_transformer", {"dim": 10, "heads": 4}, ["spec.model.params.dim"]),
    ],
)
def test_model_params_are_validated_when_the_job_is_created(
    model: str, params: dict[str, Any], fields: list[str], tenant: Any, owner: APIClient
) -> None:
    spec = {"model": {"name": model, "params": params}, "epochs": 1}
    r = owner.post(_base(tenant) + "jobs/", {"name": "bad-params", "dataset_version": 1, "spec": spec}, format="json")
    error = assert_error_shape(r, 400, fields=fields)
    assert set(error["fields"]) == set(fields), error


# --- 3. what a grantee sees of a shared dataset ----------------------------------------------------


def _graded_csv(rows: int = 103) -> bytes:
    """103 patients: ``grade`` has classes A (60), B (40) and a rare C (3)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["patient_id", "age", "bmi", "grade"])
    for i in range(rows):
        grade = "C" if i < 3 else ("A" if i % 5 < 3 else "B")
        w.writerow([f"P{1000 + i}", 18 + (i * 7) % 70 if i % 10 else "", round(17.5 + (i * 13) % 200 / 10, 1), grade])
    return buf.getvalue().encode()


def _walk_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _walk_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _walk_keys(v)}
    return set()


def test_a_process_grantee_sees_no_extremes_and_suppressed_small_counts(
    tenant: Any, other_tenant: Any, member: Callable[..., Any], api_client_for: Callable[..., Any], owner: APIClient
) -> None:
    ds = create_dataset(owner, tenant.slug, "graded")
    raw = upload_version(owner, tenant.slug, ds, _graded_csv(), label="grade")
    policy = {"columns": {"patient_id": {"action": "pseudonymise", "params": {}}}, "quasi_identifiers": [], "k": None}
    deid = deidentify(owner, tenant.slug, ds, raw["id"], policy)
    # The owner's own statistics are exact (they are the owner's data).
    own_age = next(c for c in deid["validation"]["columns"] if c["name"] == "age")
    assert {"min", "max", "mean", "std"} <= set(own_age)
    r = owner.post(
        f"{_base(tenant)}datasets/{ds}/grants/", {"grantee": other_tenant.slug, "permission": "process"}, format="json"
    )
    assert r.status_code == 201, r.content

    partner = api_client_for(member(Role.ANALYST, tenant=other_tenant))
    detail = partner.get(f"/api/v1/tenants/{other_tenant.slug}/shared-datasets/{ds}/").json()
    listed = partner.get(f"/api/v1/tenants/{other_tenant.slug}/shared-datasets/").json()["results"]
    version = detail["version"]
    assert listed[0]["version"] == version
    keys = _walk_keys(version)
    leaked = keys & {"min", "max", "mean", "std", "min_length", "max_length", "mean_length", "distinct", "nulls"}
    assert not leaked, leaked
    assert version["rows"] == 103
    stats = version["statistics"]
    assert stats["min_count"] == 5
    # C (3 rows) is below k; what is hidden must add up to k or more, so B goes too.
    assert stats["class_counts"] == {"A": 60, "B": None, "C": None}
    by_name = {c["name"]: c for c in stats["columns"]}
    assert set(by_name) == {"patient_id", "age", "bmi", "grade"}
    assert set(by_name["age"]) == {"name", "type", "role", "null_fraction"}
    assert by_name["age"]["null_fraction"] == 0.1  # 11/103 nulls, rounded to 5 %
    assert by_name["grade"]["role"] == "label"
    # The owner sees exactly what the grantee sees.
    own = owner.get(f"{_base(tenant)}datasets/{ds}/versions/{deid['id']}/").json()
    assert own["grantee_view"] == stats
    assert owner.get(f"{_base(tenant)}datasets/{ds}/versions/{raw['id']}/").json()["grantee_view"] is None


def test_k_is_a_setting(settings: Any) -> None:
    settings.COHORT_GRANTEE_MIN_COUNT = 2
    assert selectors.grantee_min_count() == 2
    assert selectors._suppress({"a": 10, "b": 3, "c": 1}, 2) == {"a": 10, "b": None, "c": None}
    assert selectors._suppress({"a": 10, "b": 3}, 2) == {"a": 10, "b": 3}
    assert selectors._suppress({"a": 1}, 5) == {"a": None}


# --- 4. privacy-budget reservations: the platform reserves, within the grant's allotment -----------


def _shared(owner: APIClient, tenant: Any, other: Any, **grant: Any) -> tuple[int, int]:
    ds = create_dataset(owner, tenant.slug, "budgeted")
    r = owner.put(f"{_base(tenant)}datasets/{ds}/budget/", {"epsilon": "10", "delta": "0.001"}, format="json")
    assert r.status_code == 200, r.content
    r = owner.post(
        f"{_base(tenant)}datasets/{ds}/grants/",
        {"grantee": other.slug, "permission": "process", **grant},
        format="json",
    )
    assert r.status_code == 201, r.content
    return ds, int(r.json()["id"])


def _reserve(consumer: Any, ds: int, epsilon: str, delta: str = "0") -> BudgetReservation:
    """What the platform does when a grantee's job starts (in the grantee's scope)."""
    with tenant_scope(consumer.pk):
        dataset = Dataset.all_tenants.get(pk=ds)  # visible through the grant
        return services.budget_reserve(
            consumer=consumer,
            budget=selectors.budget_for(dataset=dataset),
            epsilon=Decimal(epsilon),
            delta=Decimal(delta),
            purpose="job start",
            reference="test",
            created_by=None,
        )


def test_a_grantee_cannot_reserve_budget_through_the_api(
    tenant: Any, other_tenant: Any, member: Callable[..., Any], api_client_for: Callable[..., Any], owner: APIClient
) -> None:
    ds, _grant = _shared(owner, tenant, other_tenant, epsilon_allotment="1")
    partner = api_client_for(member(Role.OWNER, tenant=other_tenant))
    for eps in ("1000", "0.1"):
        r = partner.post(
            f"/api/v1/tenants/{other_tenant.slug}/datasets/{ds}/budget/reservations/",
            {"epsilon": eps, "delta": "0", "purpose": "drain"},
            format="json",
        )
        assert assert_error_shape(r, 403)["code"] == "platform_reservation_only"
    with tenant_scope(tenant.pk):  # the owner sees every reservation on its budget
        assert not BudgetReservation.objects.filter(budget__dataset_id=ds).exists()
    # The grantee still sees the budget and its own (platform-made) reservations.
    assert partner.get(f"/api/v1/tenants/{other_tenant.slug}/datasets/{ds}/budget/").status_code == 200
    # The owner reserves on its own dataset as before.
    r = owner.post(
        f"{_base(tenant)}datasets/{ds}/budget/reservations/",
        {"epsilon": "0.5", "delta": "0", "purpose": "own"},
        format="json",
    )
    assert r.status_code == 201, r.content


def test_a_grantee_reservation_beyond_its_allotment_is_a_422_naming_the_grant(
    tenant: Any, other_tenant: Any, owner: APIClient
) -> None:
    ds, grant_id = _shared(owner, tenant, other_tenant, epsilon_allotment="1.5", delta_allotment="0.0001")
    grant = owner.get(f"{_base(tenant)}datasets/{ds}/grants/{grant_id}/").json()
    assert (grant["epsilon_allotment"], grant["delta_allotment"]) == ("1.500000", "0.000100000000")
    first = _reserve(other_tenant, ds, "1.0", "0.00005")
    assert first.state == BudgetReservation.State.RESERVED
    for eps, delta in (("0.6", "0"), ("1000", "0"), ("0.1", "0.0001")):
        with pytest.raises(Unprocessable) as info:
            _reserve(other_tenant, ds, eps, delta)
        exc = info.value
        assert exc.http_status == 422 and exc.code == "allotment_exceeded"
        assert exc.details["grant_id"] == grant_id and str(grant_id) in exc.message
        assert exc.details["epsilon_used"] == "1.000000"
    # Committing less than reserved frees the difference for the grantee's next use.
    with tenant_scope(other_tenant.pk):
        services.budget_settle(consumer=other_tenant, reservation=first, commit=True, epsilon_spent=Decimal("0.5"))
    assert _reserve(other_tenant, ds, "1.0").epsilon == Decimal("1.0")
    with tenant_scope(tenant.pk):
        held = BudgetReservation.objects.filter(budget__dataset_id=ds).count()
    assert held == 2


def test_a_grant_without_allotment_allows_no_dp_use(tenant: Any, other_tenant: Any, owner: APIClient) -> None:
    ds, grant_id = _shared(owner, tenant, other_tenant)
    with pytest.raises(Unprocessable) as info:
        _reserve(other_tenant, ds, "0.01")
    assert info.value.details["grant_id"] == grant_id and info.value.details["epsilon_allotment"] is None


def test_only_process_grants_carry_an_allotment(tenant: Any, other_tenant: Any, owner: APIClient) -> None:
    ds = create_dataset(owner, tenant.slug, "dl")
    r = owner.post(
        f"{_base(tenant)}datasets/{ds}/grants/",
        {"grantee": other_tenant.slug, "permission": "download", "epsilon_allotment": "1"},
        format="json",
    )
    assert_error_shape(r, 400, fields=["epsilon_allotment"])
    r = owner.post(
        f"{_base(tenant)}datasets/{ds}/grants/",
        {"grantee": other_tenant.slug, "permission": "process", "epsilon_allotment": "-1"},
        format="json",
    )
    assert_error_shape(r, 400, fields=["epsilon_allotment"])


# --- 5. upload chunks outside the declared size ----------------------------------------------------


def test_a_chunk_beyond_the_declared_size_is_a_416_and_stores_nothing(tenant: Any, owner: APIClient) -> None:
    ds = create_dataset(owner, tenant.slug, "ranges")
    r = owner.post(_base(tenant) + "uploads/", {"dataset_id": ds, "filename": "a.csv", "size": 64}, format="json")
    assert r.status_code == 201, r.content
    url = f"{_base(tenant)}uploads/{r.json()['id']}/"
    ten = b"0123456789"
    cases = [
        {"HTTP_CONTENT_RANGE": "bytes 0-9/100000"},  # the total is not the declared size
        {"HTTP_CONTENT_RANGE": "bytes 60-69/64"},  # runs past the end
        {"HTTP_CONTENT_RANGE": "bytes 1000-1009/*"},  # starts past the end
    ]
    for headers in cases:
        r = owner.put(url, ten, content_type="application/octet-stream", **headers)
        error = assert_error_shape(r, 416)
        assert error["code"] == "range_not_satisfiable" and r["Content-Range"] == "bytes */64", headers
    r = owner.put(url + "?offset=64", ten, content_type="application/octet-stream")
    assert_error_shape(r, 416)
    with tenant_scope(tenant.pk):
        assert not UploadPart.objects.filter(session_id=int(url.rstrip("/").rsplit("/", 1)[1])).exists()
    assert owner.get(url).json()["received"] == []
    # A chunk inside the declared size is still stored.
    r = owner.put(url, ten, content_type="application/octet-stream", HTTP_CONTENT_RANGE="bytes 54-63/64")
    assert r.status_code == 200 and r.json()["received"] == [[54, 64]], r.content
