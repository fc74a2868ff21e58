"""Shared helpers for the security suite: the error envelope, superuser reads, audit counts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.conf import settings

from tests.conftest import _admin_db_url, _test_db_name

DENIAL_ACTIONS = ("access.denied", "api_key.use_denied")
REFUSED_STATUSES = (401, 403, 404)


def assert_error_shape(response: Any, status: int | None = None, *, fields: Iterable[str] = ()) -> dict[str, Any]:
    """The response is the API error envelope (optionally with ``status`` and these field errors)."""
    if status is not None:
        assert response.status_code == status, (response.status_code, response.content[:500])
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) <= {"code", "message", "fields"} and {"code", "message"} <= set(error), error
    assert isinstance(error["code"], str) and error["code"] and isinstance(error["message"], str), error
    for name in fields:
        assert name in error.get("fields", {}), (name, error)
    return error


def admin_connect() -> psycopg.Connection:
    """A superuser connection to the test database (bypasses RLS; sees committed rows only)."""
    return psycopg.connect(_admin_db_url(_test_db_name()), autocommit=True)


def app_conninfo() -> str:
    """libpq connection string for the application role (NOSUPERUSER, NOBYPASSRLS) on the test DB."""
    from tests.processes import serving_login

    db = serving_login(settings, "default")
    parts = {
        "dbname": db["NAME"],
        "user": db["USER"],
        "password": db["PASSWORD"],
        "host": db["HOST"],
        "port": db["PORT"],
    }
    return " ".join(f"{k}='{v}'" for k, v in parts.items() if v not in (None, ""))


def app_connect(**kwargs: Any) -> psycopg.Connection:
    return psycopg.connect(app_conninfo(), **kwargs)


def tenant_tables(conn: psycopg.Connection) -> list[str]:
    """Every table in ``public`` that has a ``tenant_id`` column."""
    rows = conn.execute(
        """
        SELECT c.relname FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
         ORDER BY c.relname
        """
    ).fetchall()
    return [r[0] for r in rows]


def denial_count(conn: psycopg.Connection) -> int:
    """Committed denial events (access.denied, api_key.use_denied) in all chains."""
    return int(
        conn.execute("SELECT count(*) FROM audit_auditevent WHERE action = ANY(%s)", [list(DENIAL_ACTIONS)]).fetchone()[
            0
        ]
    )


# --- dataset objects ---------------------------------------------------------------------------------


@dataclass
class DatasetSeed:
    """One of every dataset object of a tenant, made through the real API (see ``seed_datasets``)."""

    dataset_id: int
    name: str
    raw_version_id: int
    deid_version_id: int
    grant_id: int
    upload_id: int
    reservation_id: int
    job_id: int = 0  # a finished (succeeded) training job on the de-identified version
    job_name: str = ""
    model_id: int = 0  # the model version that job registered
    federation_id: int = 0  # a started federation over the dataset (round 0 open: rounds, slots, events)
    site_id: int = 0  # its one site
    model_sha256: str = ""
    content_sha256: list[str] = field(default_factory=list)

    def object_ids(self) -> dict[str, int]:
        return {
            "dataset_id": self.dataset_id,
            "version_id": self.raw_version_id,
            "grant_id": self.grant_id,
            "upload_id": self.upload_id,
            "reservation_id": self.reservation_id,
            "job_id": self.job_id,
            "model_id": self.model_id,
            "federation_id": self.federation_id,
            "site_id": self.site_id,
        }


def seed_datasets(client: Any, tenant: Any, *, name: str, grantee_slug: str, rows: int = 12) -> DatasetSeed:
    """Through the API as ``client`` (an owner of ``tenant``): a dataset with a raw and a
    de-identified version, a ``process`` grant to ``grantee_slug``, an open upload session with one
    chunk stored, and a budget reservation; plus a quota row (no API sets quotas). Every new
    dataset table and ``vault_datakey`` then has a row of ``tenant``."""
    from apps.audit.services import audit_record, audited_change
    from apps.datasets.models import DatasetQuota
    from apps.tenancy.scope import tenant_scope
    from tests.apps.datasets.helpers import create_dataset, deidentify, table_csv, upload_version

    slug = tenant.slug
    ds_id = create_dataset(client, slug, name)
    raw = upload_version(client, slug, ds_id, table_csv(rows, seed=tenant.pk % 7), label="outcome")
    deid = deidentify(client, slug, ds_id, raw["id"])
    base = f"/api/v1/tenants/{slug}/"
    r = client.post(
        f"{base}datasets/{ds_id}/grants/", {"grantee": grantee_slug, "permission": "process"}, format="json"
    )
    assert r.status_code == 201, r.content
    grant_id = r.json()["id"]
    r = client.post(
        f"{base}datasets/{ds_id}/budget/reservations/",
        {"epsilon": "0.5", "delta": "0", "purpose": "seed"},
        format="json",
    )
    assert r.status_code == 201, r.content
    reservation_id = r.json()["id"]
    r = client.post(f"{base}uploads/", {"dataset_id": ds_id, "filename": "part.csv", "size": 64}, format="json")
    assert r.status_code == 201, r.content
    upload_id = r.json()["id"]
    r = client.put(f"{base}uploads/{upload_id}/?offset=0", b"a,b\n1,2\n", content_type="application/octet-stream")
    assert r.status_code == 200, r.content
    with tenant_scope(tenant.pk), audited_change():
        quota, _ = DatasetQuota.objects.get_or_create(tenant=tenant, defaults={"max_datasets": 50})
        audit_record(action="dataset.quota_set", tenant=tenant, target=quota, details={"fixture": True})
    from apps.training.scheduler import quota_set

    quota_set(tenant_id=tenant.pk, changes={"max_concurrent_jobs": 60}, actor_label="fixture")
    # A finished training job on the de-identified version: a job, its events and a model version.
    from apps.training import services as training

    with tenant_scope(tenant.pk):
        job = training.job_create(
            tenant=tenant,
            created_by=None,
            name=f"{name} model",
            dataset_version_id=deid["id"],
            spec={"model": {"name": "logistic_regression", "params": {}}, "epochs": 1, "batch_size": 8},
        )
    assert training.run_job(tenant.pk, job.pk) == "succeeded"
    from apps.training.models import ModelVersion

    with tenant_scope(tenant.pk):
        model = ModelVersion.objects.get(job_id=job.pk)
    # A federation over the dataset, approved and started: one row in every federation table.
    r = client.post(
        f"{base}federations/",
        {"name": f"{name} federation", "spec": {"train": {"model": {"name": "logistic_regression", "params": {}},
         "epochs": 1, "batch_size": 8}, "rounds": 1, "min_participants": 1}, "sites": [{"dataset_id": ds_id}]},
        format="json",
    )  # fmt: skip
    assert r.status_code == 201, r.content
    federation_id = r.json()["id"]
    site = next(s for s in client.get(f"{base}federation-sites/").json()["results"] if s["federation"] == federation_id)
    r = client.post(f"{base}federation-sites/{site['id']}/approve/", {"digest": site["digest"]}, format="json")
    assert r.status_code == 200, r.content
    r = client.post(f"{base}federations/{federation_id}/start/")
    assert r.status_code == 200, r.content
    _seed_prepared_cache(tenant.pk, federation_id, site["id"])
    return DatasetSeed(
        federation_id=federation_id,
        site_id=site["id"],
        dataset_id=ds_id,
        name=name,
        raw_version_id=raw["id"],
        deid_version_id=deid["id"],
        grant_id=grant_id,
        upload_id=upload_id,
        reservation_id=reservation_id,
        job_id=job.pk,
        job_name=job.name,
        model_id=model.pk,
        model_sha256=model.sha256,
        content_sha256=[v for v in (raw["content_sha256"], deid["content_sha256"]) if v],
    )


def set_signed_context(conn: psycopg.Connection, **values: object) -> None:
    """On a raw connection, set RLS context values with their MACs, as ``set_db_context`` does
    (the database ignores a value without its MAC: tests/security/test_platform_role.py)."""
    from apps.tenancy.scope import context_mac

    pid = conn.info.backend_pid
    for name, value in values.items():
        text = "" if value is None else str(value)
        mac = context_mac(backend_pid=pid, name=name, value=text) if text else ""
        conn.execute(
            "SELECT set_config(%s, %s, true), set_config(%s, %s, true)",
            [f"app.{name}", text, f"app.{name}_mac", mac],
        )


def _seed_prepared_cache(tenant_id: int, federation_id: int, site_id: int) -> None:
    """A cached (encrypted) prepared-tensor entry, as a site task of round 1 would keep: small
    tensors, so the probe has a row of ``federation_preparedcache`` without running the rounds."""
    import torch

    from apps.federation.models import Federation, FederationSite
    from apps.federation.services import prepared_store
    from apps.tenancy.scope import tenant_scope
    from workers.training.data import Prepared

    with tenant_scope(tenant_id):
        fed = Federation.objects.get(pk=federation_id)
        site = FederationSite.all_tenants.get(pk=site_id)
    x, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
    prepared = Prepared("tabular", "classification", x, y, x, y, ["a", "b"], [0, 1], {}, {"n_features": 2})
    assert prepared_store.save(fed, site, prepared_store.inputs_digest(site, "seed"), prepared)
