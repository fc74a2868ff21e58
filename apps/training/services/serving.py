"""Serving: batch predict with a model version rebuilt in this process (cached), and export as
TorchScript or ONNX. Both audited (row counts and artifact hashes, never values)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from django.conf import settings

from apps.audit.services import audit_record
from apps.common.exceptions import Invalid, Unprocessable
from apps.tenancy.models import Tenant
from apps.training.models import ModelVersion
from apps.training.services.registry import weights_bytes

PREDICT_MAX_ROWS = 256
EXPORT_FORMATS = {"torchscript": "pt", "onnx": "onnx"}

_SERVING_CACHE: OrderedDict[tuple[int, str], Any] = OrderedDict()
SERVING_CACHE_SIZE = 8


def servable(model: ModelVersion) -> bool:
    """Whether the version carries the metadata (input info) that rebuilding it needs."""
    return bool(model.input_info)


def _rebuild(model: ModelVersion) -> Any:
    if not servable(model):
        raise Unprocessable("This model version predates serving metadata; retrain it.", code="model_not_servable")
    from workers.training.inference import load_model

    return load_model(model.spec, model.encoders, model.input_info, weights_bytes(model))


def load_for_serving(model: ModelVersion) -> Any:
    """The model rebuilt for online prediction, cached per process by (id, weights hash); models
    over ``COHORT_PREDICT_MAX_MODEL_BYTES`` are refused (they are exported instead)."""
    if model.size_bytes > settings.COHORT_PREDICT_MAX_MODEL_BYTES:
        raise Unprocessable(
            f"Online prediction serves models up to {settings.COHORT_PREDICT_MAX_MODEL_BYTES} bytes; export this one "
            "(TorchScript or ONNX) and run it where the data is.",
            code="model_too_large",
            details={"size_bytes": model.size_bytes, "limit": settings.COHORT_PREDICT_MAX_MODEL_BYTES},
        )
    key = (model.pk, model.sha256)
    loaded = _SERVING_CACHE.get(key)
    if loaded is None:
        loaded = _rebuild(model)
        _SERVING_CACHE[key] = loaded
        while len(_SERVING_CACHE) > SERVING_CACHE_SIZE:
            _SERVING_CACHE.popitem(last=False)
    _SERVING_CACHE.move_to_end(key)
    return loaded


def model_predict(*, tenant: Tenant, model: ModelVersion, rows: list[Any]) -> list[dict[str, Any]]:
    """Predictions for raw rows, encoded as at training time. Audited (row count, never values)."""
    from workers.training.data import DataError
    from workers.training.inference import predict

    loaded = load_for_serving(model)
    try:
        out = predict(loaded, rows)
    except DataError as exc:
        raise Invalid(fields={"rows": [str(exc)[:300]]}) from exc
    audit_record(action="model.predicted", tenant=tenant, target=model, details={"rows": len(rows)})
    return out


def model_export(*, tenant: Tenant, model: ModelVersion, fmt: str) -> bytes:
    """TorchScript or ONNX bytes; audited with the artifact's hash."""
    from workers.training.inference import export

    if fmt not in EXPORT_FORMATS:
        raise Invalid(fields={"file_format": [f"One of {', '.join(EXPORT_FORMATS)}."]})
    # The online-prediction size cap does not apply: a model too large to serve is the one to export
    # (rebuilt for this call, never kept in the serving cache).
    small = model.size_bytes <= settings.COHORT_PREDICT_MAX_MODEL_BYTES
    loaded = load_for_serving(model) if small else _rebuild(model)
    data = export(loaded, fmt)
    audit_record(
        action="model.exported",
        tenant=tenant,
        target=model,
        details={"format": fmt, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)},
    )
    return data
