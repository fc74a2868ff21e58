"""Training jobs through the services and the task body: a job end to end on a de-identified
dataset, duplicate delivery, resume after a crash with the same final weights, cancellation,
grant revocation stopping a partner's job, and errors that are not retried."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from unittest.mock import patch

import pytest
import torch
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.common.exceptions import Invalid, NotFound, Retryable
from apps.datasets.storage import open_decrypted
from apps.tenancy.models import Role
from apps.tenancy.scope import platform_scope, tenant_scope
from apps.training import services
from apps.training.models import JobEvent, ModelVersion, TrainingJob
from tests.apps.datasets.helpers import create_dataset, deidentify, upload_version
from workers.training.weights import load_weights

pytestmark = pytest.mark.django_db

SPEC = {
    "model": {"name": "logistic_regression", "params": {}},
    "optimizer": {"name": "adamw", "lr": 0.05},
    "epochs": 6,
    "batch_size": 32,
    "seed": 7,
    "checkpoint_every_steps": 5,
    "log_every_steps": 2,
}


def breast_cancer_csv() -> bytes:
    from sklearn.datasets import load_breast_cancer

    buf = io.StringIO()
    load_breast_cancer(as_frame=True).frame.to_csv(buf, index=False)
    return buf.getvalue().encode()


@pytest.fixture
def world(
    tenant: Any, other_tenant: Any, member: Callable[..., Any], api_client_for: Callable[..., Any]
) -> dict[str, Any]:
    owner_user = member(Role.OWNER, tenant=tenant)
    owner = api_client_for(owner_user)
    ds = create_dataset(owner, tenant.slug, "breast cancer")
    raw = upload_version(owner, tenant.slug, ds, breast_cancer_csv(), label="target")
    keep = {"columns": {}, "quasi_identifiers": [], "k": None}
    deid = deidentify(owner, tenant.slug, ds, raw["id"], keep)
    return {
        "tenant": tenant,
        "partner": other_tenant,
        "owner": owner,
        "user": owner_user,
        "ds": ds,
        "raw": raw,
        "deid": deid,
    }


def _create(w: dict[str, Any], spec: dict[str, Any] | None = None, *, tenant: Any = None, name: str = "bc") -> Any:
    t = tenant or w["tenant"]
    with tenant_scope(t.pk):
        return services.job_create(
            tenant=t, created_by=None, name=name, dataset_version_id=w["deid"]["id"], spec=spec or SPEC
        )


def _job(job: Any) -> TrainingJob:
    with tenant_scope(job.tenant_id):
        return TrainingJob.objects.get(pk=job.pk)


def _weights(job: TrainingJob) -> dict[str, torch.Tensor]:
    with tenant_scope(job.tenant_id):
        mv = ModelVersion.objects.select_related("data_key").get(job=job)
        with open_decrypted(job.tenant_id, "model_version", f"job{job.pk}", mv.storage_name, mv.data_key) as r:
            tensors, _meta = load_weights(r.read())
    return tensors


def test_job_runs_end_to_end_and_registers_a_model(world: dict[str, Any]) -> None:
    job = _create(world)
    assert job.status == "queued" and job.queue == "cpu"
    assert services.run_job(job.tenant_id, job.pk) == "succeeded"
    job = _job(job)
    assert job.status == "succeeded" and job.result["final_metrics"]["val_accuracy"] >= 0.9, job.result
    assert job.progress["step"] > 0 and "train_loss" in job.progress  # written with the metrics events
    with tenant_scope(job.tenant_id):
        mv = ModelVersion.objects.get(job=job)
        seqs = list(JobEvent.objects.filter(job=job).values_list("seq", flat=True))
        kinds = set(JobEvent.objects.filter(job=job).values_list("kind", flat=True))
    assert mv.version == 1 and mv.lineage["dataset_version_id"] == world["deid"]["id"] and mv.size_bytes > 0
    assert seqs == list(range(1, len(seqs) + 1)) and {"metrics", "state"} <= kinds
    tensors = _weights(job)
    assert tensors and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values())
    # A duplicate delivery of a finished job is a no-op.
    assert services.run_job(job.tenant_id, job.pk) == "ignored"
    with platform_scope():
        acts = list(AuditEvent.all_tenants.filter(tenant_id=job.tenant_id).values_list("action", flat=True))
    for a in ("job.created", "job.started", "job.succeeded", "model.registered", "job.delivery_ignored"):
        assert a in acts, a


def test_crash_then_redelivery_resumes_to_the_same_weights(world: dict[str, Any]) -> None:
    clean = _create(world, name="clean")
    assert services.run_job(clean.tenant_id, clean.pk) == "succeeded"
    crashed = _create(world, name="crashed")
    from workers.training import engine

    real_train = engine.train
    calls = {"checkpoints": 0}

    def dying_train(spec: Any, prepared: Any, sink: Any, **kw: Any) -> Any:
        class Dying:
            def __getattr__(self, name: str) -> Any:
                return getattr(sink, name)

            def on_checkpoint(self, state: Any) -> None:
                sink.on_checkpoint(state)
                calls["checkpoints"] += 1
                if calls["checkpoints"] == 3:
                    raise ConnectionError("worker lost its broker connection")  # transient

        return real_train(spec, prepared, Dying(), **kw)

    with patch("workers.training.engine.train", dying_train), pytest.raises(Retryable) as raised:
        services.run_job(crashed.tenant_id, crashed.pk)
    assert isinstance(raised.value.__cause__, ConnectionError)  # transient: typed for the broker to redeliver
    job = _job(crashed)
    assert job.status == "running" and job.attempts == 1
    # While the lease holds, a redelivery is refused; once it expires (the worker died), it resumes.
    assert services.run_job(job.tenant_id, job.pk) == "ignored"
    with tenant_scope(job.tenant_id):
        TrainingJob.objects.filter(pk=job.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    assert services.run_job(job.tenant_id, job.pk) == "succeeded"
    job = _job(crashed)
    assert job.attempts == 2
    with tenant_scope(job.tenant_id):
        logs = [e.payload.get("line", "") for e in JobEvent.objects.filter(job=job, kind="log")]
    assert any("resuming from checkpoint" in line for line in logs), logs
    a, b = _weights(_job(clean)), _weights(job)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cancel_queued_and_running(world: dict[str, Any]) -> None:
    queued = _create(world, name="q")
    with tenant_scope(queued.tenant_id):
        services.job_cancel(tenant=world["tenant"], job=queued)
    assert _job(queued).status == "cancelled"
    assert services.run_job(queued.tenant_id, queued.pk) == "ignored"

    running = _create(world, {**SPEC, "epochs": 200}, name="r")
    original = services.DjangoSink.on_metrics

    def cancel_on_first_metrics(self: Any, step: int, epoch: int, values: dict[str, float]) -> None:
        original(self, step, epoch, values)
        if step >= 4 and not getattr(self, "_cancelled", False):
            self._cancelled = True
            with tenant_scope(self.job.tenant_id):
                services.job_cancel(tenant=world["tenant"], job=_job(self.job))

    with patch.object(services.DjangoSink, "on_metrics", cancel_on_first_metrics):
        assert services.run_job(running.tenant_id, running.pk) == "cancelled"
    job = _job(running)
    assert job.status == "cancelled" and job.result["epochs"] < 200


def test_grant_revocation_stops_a_partners_job(
    world: dict[str, Any], member: Callable[..., Any], api_client_for: Callable[..., Any]
) -> None:
    owner, t, partner = world["owner"], world["tenant"], world["partner"]
    r = owner.post(
        f"/api/v1/tenants/{t.slug}/datasets/{world['ds']}/grants/",
        {"grantee": partner.slug, "permission": "process"},
        format="json",
    )
    grant_id = r.json()["id"]
    job = _create(world, {**SPEC, "epochs": 200}, tenant=partner, name="partner")
    original = services.DjangoSink.on_metrics

    def revoke_midway(self: Any, step: int, epoch: int, values: dict[str, float]) -> None:
        original(self, step, epoch, values)
        if step >= 4 and not getattr(self, "_revoked", False):
            self._revoked = True
            resp = owner.delete(f"/api/v1/tenants/{t.slug}/datasets/{world['ds']}/grants/{grant_id}/")
            assert resp.status_code == 200

    with patch.object(services.DjangoSink, "on_metrics", revoke_midway):
        assert services.run_job(partner.pk, job.pk) == "failed"
    done = _job(job)
    assert done.status == "failed" and done.status_reason == "grant_revoked" and done.result["epochs"] < 200
    # A new job on the revoked dataset is refused outright (404, like any unknown object).
    with pytest.raises(NotFound) as refused:
        _create(world, tenant=partner, name="again")
    assert refused.value.audit["reason"] == "dataset_not_usable"


def test_bad_spec_is_a_400_and_bad_data_fails_without_retry(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(Invalid) as ei:
        _create(world, {**SPEC, "epochs": 0, "precision": "fp16", "device": "cpu"})
    assert ei.value.fields and all(k.startswith("spec.") for k in ei.value.fields), ei.value.fields
    image_model = {**SPEC, "model": {"name": "cnn_small", "params": {}}}
    with pytest.raises(Invalid) as ei:  # an image model on tabular rows: refused at creation
        _create(world, image_model)
    assert list(ei.value.fields) == ["spec.model.name"]
    # The worker's own failure path, reached with the creation check bypassed: no retry, an envelope.
    monkeypatch.setattr("apps.training.services.jobs._check_model_reads", lambda spec, version: None)
    job = _create(world, image_model)
    assert services.run_job(job.tenant_id, job.pk) == "failed"
    done = _job(job)
    assert done.status == "failed" and done.attempts == 1
    assert done.error["type"] and "last_log_lines" in done.error


def test_data_parallel_job_matches_single_process(world: dict[str, Any]) -> None:
    """world_size=2: two gloo processes on this worker, same global batch; weights agree with the
    single-process job to float summation order. The job holds two pool slots."""
    single = _create(world, {**SPEC, "epochs": 2}, name="single")
    ddp = _create(world, {**SPEC, "epochs": 2, "world_size": 2}, name="ddp")
    assert _job(ddp).slots == 2
    assert services.run_job(single.tenant_id, single.pk) == "succeeded"
    assert services.run_job(ddp.tenant_id, ddp.pk) == "succeeded"
    a, b = _weights(_job(single)), _weights(_job(ddp))
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-5, diff
    with tenant_scope(ddp.tenant_id):
        lines = [e.payload.get("line", "") for e in JobEvent.objects.filter(job_id=ddp.pk, kind="log")]
        assert JobEvent.objects.filter(job_id=ddp.pk, kind="metrics").exists()  # rank 0's progress, relayed
    assert any(line.startswith("data-parallel: 2 processes") for line in lines), lines
    done = _job(ddp)
    assert done.result["final_metrics"]["val_accuracy"] >= 0.9
