"""Three hospitals, each holding a label-skewed share of scikit-learn's breast-cancer data (a
de-identified version, granted ``federate`` to a research lab that coordinates)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from apps.tenancy.models import Role
from tests.apps.datasets.helpers import create_dataset, deidentify, upload_version
from tests.fl_data import hospital_splits

KEEP = {"columns": {}, "quasi_identifiers": [], "k": None}

SPEC: dict[str, Any] = {
    "train": {
        "model": {"name": "mlp", "params": {"hidden": [32]}},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "epochs": 2,
        "batch_size": 32,
        "seed": 5,
    },
    "strategy": {"name": "fedavg"},
    "rounds": 3,
    "min_participants": 2,
    "round_deadline_seconds": 120,
}


@pytest.fixture
def consortium(
    make_tenant: Callable[..., Any], member: Callable[..., Any], api_client_for: Callable[..., Any]
) -> dict[str, Any]:
    """``lab`` coordinates; ``hospitals[i]`` = {tenant, client, dataset, version, grant}."""
    lab = make_tenant()
    lab_user = member(Role.OWNER, tenant=lab)
    hospitals = []
    for i, data in enumerate(hospital_splits()):
        t = make_tenant()
        user = member(Role.OWNER, tenant=t)
        client = api_client_for(user)
        ds = create_dataset(client, t.slug, f"breast cancer {i + 1}")
        raw = upload_version(client, t.slug, ds, data, label="target")
        deid = deidentify(client, t.slug, ds, raw["id"], KEEP)
        r = client.post(
            f"/api/v1/tenants/{t.slug}/datasets/{ds}/grants/", {"grantee": lab.slug, "permission": "federate"},
            format="json",
        )  # fmt: skip
        assert r.status_code == 201, r.content
        hospitals.append(
            {"tenant": t, "user": user, "client": client, "dataset": ds, "version": deid, "grant": r.json()}
        )
    return {"lab": lab, "lab_user": lab_user, "lab_client": api_client_for(lab_user), "hospitals": hospitals}


def create_federation(c: dict[str, Any], spec: dict[str, Any] | None = None, **extra: Any) -> Any:
    body = {
        "name": "seed study",
        "spec": spec or SPEC,
        "sites": [{"dataset_id": h["dataset"]} for h in c["hospitals"]],
        **extra,
    }
    return c["lab_client"].post(f"/api/v1/tenants/{c['lab'].slug}/federations/", body, format="json")


def approve_all(c: dict[str, Any], fed_id: int, **decision: Any) -> list[dict[str, Any]]:
    out = []
    for h in c["hospitals"]:
        slug = h["tenant"].slug
        inbox = h["client"].get(f"/api/v1/tenants/{slug}/federation-sites/").json()["results"]
        site = next(s for s in inbox if s["federation"] == fed_id)
        r = h["client"].post(
            f"/api/v1/tenants/{slug}/federation-sites/{site['id']}/approve/",
            {"digest": site["digest"], **decision},
            format="json",
        )
        assert r.status_code == 200, r.content
        out.append(r.json())
    return out
