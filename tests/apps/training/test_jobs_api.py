"""The training API: create a job over HTTP, follow its event stream, cancel, list models and
download weights (safetensors, audited); another tenant's job is a 404."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from apps.audit.models import AuditEvent
from apps.tenancy.models import Role
from apps.tenancy.scope import platform_scope
from apps.training import services
from tests.apps.datasets.helpers import create_dataset, deidentify, upload_version
from tests.apps.training.test_jobs import SPEC, breast_cancer_csv
from workers.training.weights import load_weights

pytestmark = pytest.mark.django_db


def test_jobs_and_models_over_http(
    tenant: Any, other_tenant: Any, member: Callable[..., Any], api_client_for: Callable[..., Any]
) -> None:
    owner = api_client_for(member(Role.OWNER, tenant=tenant))
    base = f"/api/v1/tenants/{tenant.slug}/"
    ds = create_dataset(owner, tenant.slug, "bc")
    raw = upload_version(owner, tenant.slug, ds, breast_cancer_csv(), label="target")
    deid = deidentify(owner, tenant.slug, ds, raw["id"], {"columns": {}, "quasi_identifiers": [], "k": None})

    bad = owner.post(base + "jobs/", {"name": "x", "dataset_version": raw["id"], "spec": SPEC}, format="json")
    assert bad.status_code == 404  # a raw version is never trainable
    assert bad.json() == {"error": {"code": "not_found", "message": "Not found."}}
    with platform_scope():
        denied = AuditEvent.all_tenants.filter(action="access.denied", tenant_id=tenant.pk).order_by("-seq").first()
    assert denied is not None and denied.details_dict["reason"] == "dataset_not_usable"
    assert denied.target_type == "datasets.datasetversion" and denied.target_id == str(raw["id"])
    bad = owner.post(
        base + "jobs/", {"name": "x", "dataset_version": deid["id"], "spec": {"epochs": -1}}, format="json"
    )
    assert bad.status_code == 400 and any(k.startswith("spec.") for k in bad.json()["error"]["fields"])
    assert bad.json()["error"]["code"] == "validation_error"
    assert bad.json()["error"]["message"] == "The request is invalid; see fields."

    text_model = {**SPEC, "model": {"name": "text_bag"}}
    bad = owner.post(base + "jobs/", {"name": "x", "dataset_version": deid["id"], "spec": text_model}, format="json")
    assert bad.status_code == 400, bad.content  # a text model on tabular data: refused before any worker runs it
    assert bad.json()["error"]["fields"] == {
        "spec.model.name": ["The model 'text_bag' reads text input; this dataset version is tabular data."]
    }

    r = owner.post(base + "jobs/", {"name": "bc-logreg", "dataset_version": deid["id"], "spec": SPEC}, format="json")
    assert r.status_code == 201 and r.json()["status"] == "queued", r.content
    job_id = r.json()["id"]
    assert services.run_job(tenant.pk, job_id) == "succeeded"  # what the worker runs

    job = owner.get(base + f"jobs/{job_id}/").json()
    assert job["status"] == "succeeded" and job["model_version"]
    events = owner.get(base + f"jobs/{job_id}/events/").json()["results"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    later = owner.get(base + f"jobs/{job_id}/events/", {"after": 3}).json()["results"]
    assert later and later[0]["seq"] == 4
    metrics = owner.get(base + f"jobs/{job_id}/events/", {"kind": "metrics"}).json()["results"]
    assert metrics and all(e["kind"] == "metrics" for e in metrics)
    finished = owner.delete(base + f"jobs/{job_id}/")
    assert finished.status_code == 409  # already finished
    assert finished.json() == {"error": {"code": "conflict", "message": "This job is already succeeded."}}

    models = owner.get(base + "models/").json()["results"]
    assert [m["id"] for m in models] == [job["model_version"]]
    m = owner.get(base + f"models/{job['model_version']}/").json()
    assert m["lineage"]["dataset_version_id"] == deid["id"] and m["metrics"]["val_accuracy"] > 0.9
    dl = owner.get(base + f"models/{job['model_version']}/download/")
    assert dl.status_code == 200
    tensors, meta = load_weights(b"".join(dl.streaming_content))
    assert tensors and meta["job"] == str(job_id) and all(isinstance(t, torch.Tensor) for t in tensors.values())

    outsider = api_client_for(member(Role.OWNER, tenant=other_tenant))
    assert outsider.get(f"/api/v1/tenants/{tenant.slug}/jobs/{job_id}/").status_code == 404
    assert outsider.get(f"/api/v1/tenants/{other_tenant.slug}/jobs/{job_id}/").status_code == 404
    assert outsider.get(f"/api/v1/tenants/{other_tenant.slug}/models/{job['model_version']}/").status_code == 404
    r = outsider.post(
        f"/api/v1/tenants/{other_tenant.slug}/jobs/",
        {"name": "steal", "dataset_version": deid["id"], "spec": SPEC},
        format="json",
    )
    assert r.status_code == 404  # no grant: the version does not exist for this tenant

    queued = owner.post(
        base + "jobs/", {"name": "later", "dataset_version": deid["id"], "spec": SPEC}, format="json"
    ).json()
    r = owner.delete(base + f"jobs/{queued['id']}/")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"

    with platform_scope():
        acts = list(AuditEvent.all_tenants.filter(tenant=tenant).values_list("action", flat=True))
    for a in ("job.created", "job.succeeded", "model.registered", "model.downloaded", "job.cancel_requested"):
        assert a in acts, a


def test_the_catalogue_lists_the_registry_and_its_defaults_make_valid_specs(
    tenant: Any, other_tenant: Any, member: Callable[..., Any], api_client_for: Callable[..., Any]
) -> None:
    from workers.training import models as registry
    from workers.training.spec import TrainSpec

    analyst = api_client_for(member(Role.ANALYST, tenant=tenant))
    r = analyst.get(f"/api/v1/tenants/{tenant.slug}/training/catalogue/")
    assert r.status_code == 200, r.content
    body = r.json()
    assert [m["name"] for m in body["models"]] == registry.available()
    assert body["optimizers"] == ["sgd", "adam", "adamw"] and "cosine" in body["schedules"]
    assert body["defaults"]["epochs"] == TrainSpec().epochs
    mlp = next(m for m in body["models"] if m["name"] == "mlp")
    assert mlp["inputs"] == "tabular" and mlp["description"]
    assert mlp["params"]["hidden"]["type"] == "array" and mlp["params"]["dropout"]["max_exclusive"] == 1.0
    for m in body["models"]:  # what a client builds from the catalogue is a spec the API accepts
        params = {k: p["default"] for k, p in m["params"].items()}
        TrainSpec.from_dict({"model": {"name": m["name"], "params": params}}).validate()
        for k, p in m["params"].items():  # and its bounds, one parameter at a time, are the ones enforced
            over = {"integer": p.get("max", 0) + 1, "number": p.get("max_exclusive"), "boolean": "yes",
                    "array": [p.get("items", {}).get("max", 0) + 1]}[p["type"]]  # fmt: skip
            with pytest.raises(ValueError) as bad:
                TrainSpec.from_dict({"model": {"name": m["name"], "params": {**params, k: over}}}).validate()
            assert any(f.startswith(f"model.params.{k}") for f in bad.value.fields), (m["name"], k, bad.value)
    outsider = api_client_for(member(Role.OWNER, tenant=other_tenant))
    assert outsider.get(f"/api/v1/tenants/{tenant.slug}/training/catalogue/").status_code == 404
