"""Model versions: register a finished job's weights (encrypted, with spec, metrics and lineage),
and the audited weights download."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

from django.conf import settings

from apps.audit.services import audit_record, audited_change
from apps.datasets.models import DatasetVersion
from apps.datasets.storage import EncryptedUpload, open_decrypted
from apps.tenancy.models import Tenant
from apps.tenancy.scope import tenant_scope
from apps.training.models import ModelVersion, TrainingJob
from workers.training.spec import TrainSpec


def register_model(
    job: TrainingJob, spec: TrainSpec, prepared: Any, result: Any, version: DatasetVersion
) -> ModelVersion:
    """Weights as safetensors, encrypted in object storage, with spec, metrics and lineage."""
    return _register(
        **_job_fields(job),
        state=result.model_state,
        metrics=result.final_metrics,
        lineage=_job_lineage(job, version),
        encoders=getattr(prepared, "encoders", {}) or {},
        input_info={**prepared.input_info, "kind": prepared.kind, "problem": prepared.problem},
        details={"job_id": job.pk},
    )


def _job_fields(job: TrainingJob) -> dict[str, Any]:
    return {"tenant_id": job.tenant_id, "name": job.name, "job": job, "subject": f"job{job.pk}", "spec": job.spec,
            "header": {"job": str(job.pk), "spec_hash": job.spec_hash}}  # fmt: skip


def _job_lineage(job: TrainingJob, version: DatasetVersion) -> dict[str, Any]:
    return {
        "dataset_version_id": version.pk,
        "dataset_id": version.dataset_id,
        "dataset_owner_tenant_id": version.tenant_id,
        "dataset_content_sha256": version.content_sha256,
        "job_id": job.pk,
        "spec_hash": job.spec_hash,
    }


def register_simulation_model(
    job: TrainingJob, fspec: Any, split: dict[str, Any], result: Any, version: DatasetVersion
) -> ModelVersion:
    """A simulation job's global model: like a job's, its lineage adding the federation spec and
    the virtual-site split (so the run can be repeated exactly)."""
    from workers.federated.rounds import model_input_info

    label = result.encoders.get("label") or {}
    return _register(
        **_job_fields(job),
        state=result.state,
        metrics=dict(result.final_metrics),
        lineage={
            **_job_lineage(job, version),
            "simulation": {"federation_spec": fspec.to_dict(), "split": split, "model_digest": result.model_digest},
        },
        encoders=dict(result.encoders),
        input_info={
            **model_input_info(result.encoders),
            "kind": result.encoders.get("kind", "tabular"),
            "problem": "classification" if label.get("kind") == "classes" else "regression",
        },
        details={"job_id": job.pk, "simulation": True},
    )


def register_federation_model(
    *,
    tenant_id: int,
    federation_id: int,
    name: str,
    spec: dict[str, Any],
    state: Any,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    encoders: dict[str, Any],
    input_info: dict[str, Any],
) -> ModelVersion:
    """A federation's final (or best) global model in the coordinator's registry: servable and
    exportable like a job's, its lineage naming every participating dataset version. The caller
    holds the federation's row inside an audited change."""
    return _register(
        tenant_id=tenant_id,
        name=name,
        job=None,
        subject=f"federation{federation_id}",
        spec=spec,
        state=state,
        header={"federation": str(federation_id), "spec_hash": str(lineage.get("spec_hash", ""))},
        metrics=metrics,
        lineage={"federation_id": federation_id, **lineage},
        encoders=encoders,
        input_info=input_info,
        details={"federation_id": federation_id},
    )


def _register(
    *,
    tenant_id: int,
    name: str,
    job: TrainingJob | None,
    subject: str,
    spec: dict[str, Any],
    state: Any,
    header: dict[str, str],
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    encoders: dict[str, Any],
    input_info: dict[str, Any],
    details: dict[str, Any],
) -> ModelVersion:
    from workers.training.weights import save_weights

    buf = io.BytesIO()
    sha = save_weights(state, buf, header)
    data = buf.getvalue()
    with tenant_scope(tenant_id), audited_change():
        last = ModelVersion.objects.filter(name=name).order_by("-version").values_list("version", flat=True).first()
        model = ModelVersion(
            tenant_id=tenant_id,
            name=name,
            version=(last or 0) + 1,
            job=job,
            source="job" if job is not None else "federation",
            storage_subject=subject,
            spec=spec,
            metrics=metrics,
            lineage={**lineage, "code_version": code_version(), "torch_version": torch_version()},
            encoders=encoders,
            input_info=input_info,
            sha256=sha,
            size_bytes=len(data),
            storage_name="",
        )
        up = EncryptedUpload(tenant_id, "model_version", subject, size_hint=len(data))
        up.write(data)
        stored = up.finish()
        model.storage_name, model.data_key = stored.name, stored.key
        model.save()
        audit_record(
            action="model.registered",
            tenant=tenant_id,
            target=model,
            details={**details, "version": model.version, "sha256": sha},
        )
    return model


def open_weights(model: ModelVersion) -> Any:
    """A reader of the model's safetensors, decrypted on the fly (a context manager)."""
    subject = model.storage_subject or f"job{model.job_id}"  # rows from before storage_subject
    return open_decrypted(model.tenant_id, "model_version", subject, model.storage_name, model.data_key)


def weights_bytes(model: ModelVersion) -> bytes:
    with open_weights(model) as r:
        return bytes(r.read())


def model_download(*, tenant: Tenant, model: ModelVersion) -> Any:
    """The weights for download: audited (with their hash), then a decrypting reader."""
    audit_record(action="model.downloaded", tenant=tenant, target=model, details={"sha256": model.sha256})
    return open_weights(model)


def code_version() -> str:
    """The platform's code version: ``COHORT_CODE_VERSION`` (set by the image build), else the git
    commit of the checkout, else the package version."""
    return _code_version()


@functools.cache
def _code_version() -> str:
    if settings.COHORT_CODE_VERSION:
        return str(settings.COHORT_CODE_VERSION)
    git = Path(settings.BASE_DIR) / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            if ref_file.exists():
                return "git:" + ref_file.read_text().strip()
            for line in (git / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return "git:" + line.split(" ", 1)[0]
        elif len(head) == 40:
            return "git:" + head
    except OSError:
        pass
    return "cohort " + str(settings.SPECTACULAR_SETTINGS.get("VERSION", "unknown"))


def torch_version() -> str:
    import torch

    return str(torch.__version__)
