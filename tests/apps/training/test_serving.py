"""Serving a registered model: batch predictions over HTTP from raw rows (encoded as at training
time), TorchScript and ONNX exports that reproduce the model's outputs, lineage with the code
version, audit events, and clear 4xx errors for bad input."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from sklearn.datasets import load_breast_cancer

from apps.audit.models import AuditEvent
from apps.tenancy.models import Role
from apps.tenancy.scope import platform_scope
from apps.training import services
from tests.apps.training.test_jobs import SPEC, world  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture
def served(world: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    t = world["tenant"]
    r = world["owner"].post(
        f"/api/v1/tenants/{t.slug}/jobs/", {"name": "bc", "dataset_version": world["deid"]["id"], "spec": SPEC},
        format="json",
    )  # fmt: skip
    assert r.status_code == 201, r.content
    assert services.run_job(t.pk, r.json()["id"]) == "succeeded"
    job = world["owner"].get(f"/api/v1/tenants/{t.slug}/jobs/{r.json()['id']}/").json()
    return {**world, "model": job["model_version"], "base": f"/api/v1/tenants/{t.slug}/models/{job['model_version']}/"}


def _rows(n: int) -> tuple[list[dict[str, Any]], list[int]]:
    frame = load_breast_cancer(as_frame=True).frame
    sample = frame.sample(n=n, random_state=3)
    rows = [{k: float(v) for k, v in row.items() if k != "target"} for _, row in sample.iterrows()]
    return rows, [int(v) for v in sample["target"]]


def test_batch_predict_from_raw_rows(served: dict[str, Any], member: Callable[..., Any], api_client_for: Any) -> None:
    owner, base = served["owner"], served["base"]
    rows, truth = _rows(120)
    r = owner.post(base + "predict/", {"rows": rows}, format="json")
    assert r.status_code == 200, r.content
    preds = r.json()["predictions"]
    assert len(preds) == 120 and r.json()["model"] == served["model"]
    labels = [int(p["label"]) for p in preds]
    assert sum(a == b for a, b in zip(labels, truth, strict=True)) / 120 >= 0.9
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in preds)
    # Extra keys are ignored, nulls are missing values; a missing column or a bad value is a 400.
    ok = owner.post(base + "predict/", {"rows": [{**rows[0], "note": "x", "mean radius": None}]}, format="json")
    assert ok.status_code == 200, ok.content
    missing = {k: v for k, v in rows[0].items() if k != "mean radius"}
    for body in (
        {"rows": [missing]},
        {"rows": [{**rows[0], "mean radius": "big"}]},
        {"rows": ["just text"]},
        {"rows": []},
        {"rows": rows[:1], "images": ["aGk="]},
        {"rows": rows * 3},  # over 256
    ):
        bad = owner.post(base + "predict/", body, format="json")
        assert bad.status_code == 400, (body if len(json.dumps(body)) < 500 else "big", bad.content)
        assert "error" in bad.json()
    viewer = api_client_for(member(Role.AUDITOR, tenant=served["tenant"]))
    assert viewer.post(base + "predict/", {"rows": rows[:2]}, format="json").status_code == 403
    with platform_scope():
        events = [
            json.loads(d)
            for d in AuditEvent.all_tenants.filter(action="model.predicted").values_list("details", flat=True)
        ]
    assert {"rows": 120} in events and all(set(e) == {"rows"} for e in events)  # counts, never values


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_exports_reproduce_the_model(served: dict[str, Any]) -> None:
    owner, base = served["owner"], served["base"]
    rows, _ = _rows(16)
    expected = torch.tensor(
        [[p["probabilities"][k] for k in sorted(p["probabilities"])] for p in owner.post(
            base + "predict/", {"rows": rows}, format="json"
        ).json()["predictions"]]
    )  # fmt: skip
    from apps.tenancy.scope import tenant_scope
    from apps.training.models import ModelVersion
    from workers.training.inference import encode_rows

    with tenant_scope(served["tenant"].pk):
        mv = ModelVersion.objects.get(pk=served["model"])
        loaded = services._load_for_serving(mv)
    x = encode_rows(loaded, rows)

    ts = owner.get(base + "export/", {"file_format": "torchscript"})
    assert ts.status_code == 200 and ts["Content-Disposition"].endswith('.pt"')
    scripted = torch.jit.load(io.BytesIO(ts.content))
    got = torch.softmax(scripted(x), dim=1)
    assert torch.allclose(got, expected, atol=1e-5)

    ox = owner.get(base + "export/", {"file_format": "onnx"})
    assert ox.status_code == 200 and ox.content[:2] != b"PK"
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(ox.content, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    assert torch.allclose(torch.softmax(torch.from_numpy(logits), dim=1), expected, atol=1e-5)

    assert owner.get(base + "export/", {"file_format": "pickle"}).status_code == 400
    assert owner.get(base + "export/").status_code == 400
    m = owner.get(base).json()
    assert m["lineage"]["code_version"] and m["lineage"]["torch_version"] == torch.__version__
    assert m["input_info"]["kind"] == "tabular" and m["input_info"]["n_features"] == 30
    with platform_scope():
        formats = {
            json.loads(d)["format"]
            for d in AuditEvent.all_tenants.filter(action="model.exported").values_list("details", flat=True)
        }
    assert formats == {"torchscript", "onnx"}


def test_oversized_models_are_refused_for_online_predict(served: dict[str, Any], settings: Any) -> None:
    settings.COHORT_PREDICT_MAX_MODEL_BYTES = 10
    r = served["owner"].post(served["base"] + "predict/", {"rows": _rows(1)[0]}, format="json")
    assert r.status_code == 422 and r.json()["error"]["code"] == "model_too_large"
    bad_b64 = served["owner"].post(served["base"] + "predict/", {"images": ["!!!"]}, format="json")
    assert bad_b64.status_code in (400, 422)
    # What the refusal points to works: a model too large to serve is still exported.
    ts = served["owner"].get(served["base"] + "export/", {"file_format": "torchscript"})
    assert ts.status_code == 200 and len(ts.content) > 0
