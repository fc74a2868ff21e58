"""Shared helpers for dataset tests: upload through the real API, read stored objects back."""

from __future__ import annotations

import csv
import io
from typing import Any

from apps.datasets.models import DatasetVersion
from apps.datasets.services import VERSION_KIND
from apps.datasets.storage import open_decrypted
from apps.tenancy.scope import tenant_scope


def table_csv(rows: int = 40, *, canary: str = "", seed: int = 0) -> bytes:
    """A small clinical table; ``canary`` (if given) is planted in the name and notes columns."""
    first = ["James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda"]
    last = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["patient_id", "name", "email", "age", "sex", "notes", "outcome"])
    for i in range(rows):
        fn, ln = first[(i + seed) % 8], last[(i * 3 + seed) % 8]
        w.writerow(
            [
                f"P{seed}{10000 + i}",
                f"{fn} {ln}{' ' + canary if canary and i == 0 else ''}",
                f"{fn.lower()}.{ln.lower()}{i}@example.org",
                30 + i % 40,
                "F" if i % 2 else "M",
                f"Follow-up for {fn} {ln}. {canary if canary else ''}",
                i % 2,
            ]
        )
    return buf.getvalue().encode()


def named(data: bytes, name: str = "data.csv") -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


def create_dataset(client: Any, slug: str, name: str) -> int:
    r = client.post(f"/api/v1/tenants/{slug}/datasets/", {"name": name}, format="json")
    assert r.status_code == 201, r.content
    return int(r.json()["id"])


def upload_version(client: Any, slug: str, ds_id: int, data: bytes, **opts: Any) -> dict[str, Any]:
    r = client.post(
        f"/api/v1/tenants/{slug}/datasets/{ds_id}/versions/", {"file": named(data), **opts}, format="multipart"
    )
    assert r.status_code == 201, r.content
    return dict(r.json())


SIMPLE_POLICY = {
    "columns": {
        "patient_id": {"action": "pseudonymise", "params": {}},
        "name": {"action": "drop", "params": {}},
        "email": {"action": "drop", "params": {}},
        "notes": {"action": "redact", "params": {"kinds": "all"}},
    },
    "quasi_identifiers": [],
    "k": None,
}


def deidentify(
    client: Any, slug: str, ds_id: int, version_id: int, policy: dict[str, Any] | None = None
) -> dict[str, Any]:
    r = client.post(
        f"/api/v1/tenants/{slug}/datasets/{ds_id}/versions/{version_id}/deidentify/",
        {"policy": policy or SIMPLE_POLICY},
        format="json",
    )
    assert r.status_code == 201, r.content
    return dict(r.json())


def read_version(version: DatasetVersion, *, key: Any = None, name: str | None = None) -> bytes:
    """Decrypt a stored version (optionally with another key or object name)."""
    with tenant_scope(version.tenant_id):
        reader = open_decrypted(
            version.tenant_id, VERSION_KIND, version.pk, name or version.storage_name, key or version.data_key
        )
        with reader:
            return reader.read()
