"""Console pages for datasets, versions, grants, budgets and data keys: staff read metadata across
tenants; nothing is editable; no key material or storage paths are shown."""

from __future__ import annotations

from typing import Any

import pytest

from apps.datasets.models import DatasetVersion
from apps.tenancy.models import Role
from apps.tenancy.scope import platform_scope
from apps.vault.models import DataKey
from tests.apps.datasets.helpers import create_dataset, deidentify, table_csv, upload_version

pytestmark = pytest.mark.django_db(transaction=True)


def test_console_shows_dataset_metadata_read_only(
    staff_client: Any, tenant: Any, other_tenant: Any, member: Any, api_client_for: Any
) -> None:
    owner = api_client_for(member(Role.OWNER, tenant=tenant))
    ds = create_dataset(owner, tenant.slug, "Oncology outcomes")
    raw = upload_version(owner, tenant.slug, ds, table_csv(20), label="outcome")
    deidentify(owner, tenant.slug, ds, raw["id"])
    owner.post(
        f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/grants/",
        {"grantee": other_tenant.slug, "permission": "process"},
        format="json",
    )
    owner.post(
        f"/api/v1/tenants/{tenant.slug}/datasets/{ds}/budget/reservations/",
        {"epsilon": "1", "delta": "0", "purpose": "study"},
        format="json",
    )
    client, _ = staff_client()
    with platform_scope():
        version = DatasetVersion.all_tenants.get(pk=raw["id"])
        key = DataKey.all_tenants.filter(tenant=tenant).first()
    assert key is not None
    pages = {
        "/admin/datasets/dataset/": "Oncology outcomes",
        "/admin/datasets/datasetversion/": "Oncology outcomes",
        f"/admin/datasets/datasetversion/{version.pk}/change/": version.content_sha256,
        "/admin/datasets/datasetgrant/": other_tenant.slug,
        "/admin/datasets/privacybudget/": "Oncology outcomes",
        "/admin/vault/datakey/": key.kek_id,
    }
    for url, expected in pages.items():
        r = client.get(url)
        assert r.status_code == 200, url
        html = r.content.decode()
        assert expected in html, url
        assert 'name="_save"' not in html, url
        assert version.storage_name not in html, url
    r = client.get(f"/admin/vault/datakey/{key.pk}/change/")
    assert r.status_code == 200 and "wrapped" not in r.content.decode().lower().replace("rewrapped", "")
    for url in ("/admin/datasets/dataset/add/", "/admin/datasets/datasetgrant/add/", "/admin/vault/datakey/add/"):
        assert client.get(url).status_code == 403, url
    assert client.post(f"/admin/datasets/datasetversion/{version.pk}/delete/", {"post": "yes"}).status_code == 403
