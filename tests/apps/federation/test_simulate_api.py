"""``POST /federations/simulate/``: a federation spec as a job over seeded virtual sites of the
tenant's own version, run by the job runner (the same task a worker runs), its model registered."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from apps.audit.models import AuditEvent
from apps.tenancy.models import Role
from apps.tenancy.scope import platform_scope, tenant_scope
from apps.training import services
from apps.training.models import JobEvent, ModelVersion, TrainingJob
from apps.training.services.inputs import load_table
from tests.apps.training.test_jobs import world  # noqa: F401  (the fixture)
from workers.federated.simulate import SplitSpec, run, simulation_secret, split_sites
from workers.federated.spec import FederationSpec
from workers.schema import DatasetSchema
from workers.training.weights import load_weights

pytestmark = pytest.mark.django_db

FSPEC: dict[str, Any] = {
    "train": {
        "model": {"name": "mlp", "params": {"hidden": [16]}},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "epochs": 1,
        "batch_size": 32,
        "seed": 4,
    },
    "strategy": {"name": "fedavg"},
    "rounds": 3,
}
SPLIT = {"sites": 3, "partition": "dirichlet", "alpha": 0.5, "seed": 1}


def _post(w: dict[str, Any], **body: Any) -> Any:
    payload = {"name": "sim", "dataset_version": w["deid"]["id"], "spec": FSPEC, "split": SPLIT, **body}
    return w["owner"].post(f"/api/v1/tenants/{w['tenant'].slug}/federations/simulate/", payload, format="json")


def test_simulation_job_runs_streams_rounds_and_registers_the_global_model(world: dict[str, Any]) -> None:  # noqa: F811
    r = _post(world, local_baseline=True)
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["kind"] == "simulate" and body["status"] == "queued"
    assert body["simulation"]["split"] == {**SPLIT, "evaluation_sites": 0}
    assert body["spec_hash"] == FederationSpec.from_dict(FSPEC).spec_hash()
    tid = world["tenant"].pk
    assert services.run_job(tid, body["id"]) == "succeeded"
    with tenant_scope(tid):
        job = TrainingJob.objects.get(pk=body["id"])
        epochs = list(JobEvent.objects.filter(job=job, kind="metrics").values_list("epoch", flat=True))
        mv = ModelVersion.objects.get(job=job)
        table = load_table(job, job.dataset_version)
        schema = DatasetSchema.from_dict(job.dataset_version.schema)
    res = job.result
    assert [x["round"] for x in res["rounds"]] == [1, 2, 3] and epochs == [1, 2, 3]
    assert set(res["local_only"]) == set(res["per_site"]) == {"site-1", "site-2", "site-3"}
    assert res["final_metrics"]["accuracy"] > 0.85 and res["model_version_id"] == mv.pk
    assert mv.source == "job" and mv.lineage["simulation"]["split"] == body["simulation"]["split"]

    # The registered weights are what the simulator gives on the same version, split and spec.
    fspec, split = FederationSpec.from_dict(FSPEC), SplitSpec.from_dict(SPLIT)
    again = run(fspec, split_sites(table, schema, split), schema, secret=simulation_secret(fspec, split),
                federation_id=job.pk)  # fmt: skip
    with tenant_scope(tid):
        tensors, _ = load_weights(services.weights_bytes(mv))
    assert tensors.keys() == again.state.keys() and all(torch.equal(tensors[k], again.state[k]) for k in tensors)
    assert again.model_digest == res["model_digest"]

    # It serves like any model, and the audit trail records the simulation.
    row = {c["name"]: 0.0 for c in mv.encoders["columns"]}
    p = world["owner"].post(f"/api/v1/tenants/{world['tenant'].slug}/models/{mv.pk}/predict/", {"rows": [row]},
                            format="json")  # fmt: skip
    assert p.status_code == 200, p.content
    with platform_scope():
        created = list(
            AuditEvent.all_tenants.filter(tenant=world["tenant"], action="job.created").values_list(
                "details", flat=True
            )
        )
    assert any("simulate" in str(d) for d in created), created


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"split": {**SPLIT, "sites": 1}}, "split.sites"),
        ({"split": {**SPLIT, "shards": 2}}, "split.shards"),
        ({"split": {**SPLIT, "partition": "pathological"}}, "split.partition"),
        ({"spec": {**FSPEC, "strategy": {"name": "krum", "params": {"f": 1}}}}, "spec.strategy"),
        ({"spec": {**FSPEC, "rounds": 0}}, "spec.rounds"),
        ({"spec": {**FSPEC, "lr": 1}}, "spec.lr"),
        ({"spec": {**FSPEC, "evaluation": {"central": True}}}, "spec.evaluation.central"),
        ({"local_baseline": "maybe"}, "local_baseline"),
    ],
)
def test_bad_simulations_are_400s_naming_the_field(world: dict[str, Any], body: dict[str, Any], field: str) -> None:  # noqa: F811
    r = _post(world, **body)
    assert r.status_code == 400, r.content
    fields = r.json()["error"]["fields"]
    assert any(k.startswith(field) for k in fields), fields
    with tenant_scope(world["tenant"].pk):
        assert not TrainingJob.objects.filter(kind="simulate").exists()


def test_simulation_needs_own_data_and_the_job_role(
    world: dict[str, Any],  # noqa: F811
    member: Any,
    api_client_for: Any,
) -> None:
    w = world
    partner = w["partner"]
    r = w["owner"].post(f"/api/v1/tenants/{w['tenant'].slug}/datasets/{w['ds']}/grants/",
                        {"grantee": partner.slug, "permission": "process"}, format="json")  # fmt: skip
    assert r.status_code == 201, r.content
    pc = api_client_for(member(Role.OWNER, tenant=partner))
    body = {"name": "sim", "dataset_version": w["deid"]["id"], "spec": FSPEC, "split": SPLIT}
    r = pc.post(f"/api/v1/tenants/{partner.slug}/federations/simulate/", body, format="json")
    assert r.status_code == 400 and "dataset_version" in r.json()["error"]["fields"], r.content
    r = pc.post(f"/api/v1/tenants/{partner.slug}/federations/simulate/", {**body, "dataset_version": 999999},
                format="json")  # fmt: skip
    assert r.status_code == 404, r.content
    auditor = api_client_for(member(Role.AUDITOR, tenant=w["tenant"]))
    r = auditor.post(f"/api/v1/tenants/{w['tenant'].slug}/federations/simulate/", body, format="json")
    assert r.status_code == 403, r.content
