"""Training REST API: jobs (create, list, get, cancel, event stream, quota) and model versions
(list, get, audited weights download, export, batch predict). Views parse and answer; the
services and selectors do the work (and every audit write)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.common.api import error_responses, paginated
from apps.common.idempotency import idempotent
from apps.common.pagination import CursorPagination
from apps.tenancy.api.base import TenantApi
from apps.training import selectors, services
from apps.training.access import access_job, access_model
from apps.training.api.serializers import (
    CatalogueOutput,
    EventOutput,
    JobInput,
    JobOutput,
    ModelOutput,
    PredictInput,
    PredictOutput,
    QuotaOutput,
)
from apps.training.models import JobEvent, TrainingJob


class JobListApi(TenantApi):
    pagination_class = CursorPagination
    permission_actions = {"GET": "job.list", "POST": "job.create"}

    class Input(JobInput):
        pass

    @extend_schema(
        operation_id="jobs_list",
        parameters=[OpenApiParameter("status", str, enum=[s.value for s in TrainingJob.Status])],
        responses={200: JobOutput(many=True), **error_responses()},
        tags=["training"],
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        st = request.query_params.get("status", "")
        if "status" in request.query_params and st not in TrainingJob.Status.values:
            raise ValidationError({"status": [f"One of {', '.join(TrainingJob.Status.values)}."]})
        return paginated(self, request, selectors.job_list(tenant=self.tenant, status=st), JobOutput)

    @extend_schema(
        operation_id="jobs_create",
        summary="Start a training job (queued; a worker claims it after commit)",
        request=Input,
        responses={201: JobOutput, **error_responses(415, 422)},
        tags=["training"],
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        def create() -> Response:
            data = self.Input(data=request.data)
            data.is_valid(raise_exception=True)
            job = services.job_create(
                tenant=self.tenant,
                created_by=request.user,
                name=data.validated_data["name"],
                dataset_version_id=data.validated_data["dataset_version"],
                spec=data.validated_data["spec"],
                priority=data.validated_data["priority"],
            )
            return Response(JobOutput(job).data, status=status.HTTP_201_CREATED)

        return idempotent(request, self.tenant.pk, create)


class JobDetailApi(TenantApi):
    permission_actions = {"GET": "job.list", "DELETE": "job.cancel"}

    @extend_schema(operation_id="jobs_retrieve", responses={200: JobOutput, **error_responses()}, tags=["training"])
    def get(self, request: Request, tenant_slug: str, job_id: int) -> Response:
        return Response(JobOutput(access_job(tenant=self.tenant, job_id=job_id)).data)

    @extend_schema(
        operation_id="jobs_cancel",
        summary="Cancel: a queued job at once, a running one at its next step",
        responses={200: JobOutput, **error_responses(409)},
        tags=["training"],
    )
    def delete(self, request: Request, tenant_slug: str, job_id: int) -> Response:
        job = access_job(tenant=self.tenant, job_id=job_id)
        return Response(JobOutput(services.job_cancel(tenant=self.tenant, job=job)).data)


class JobEventsApi(TenantApi):
    pagination_class = CursorPagination
    permission_actions = {"GET": "job.list"}

    @extend_schema(
        operation_id="jobs_events",
        summary="The job's event stream (metrics, log lines, state changes) after a sequence number",
        parameters=[
            OpenApiParameter("after", int, description="Only events with seq > after (replay from any point)"),
            OpenApiParameter("kind", str, enum=[k.value for k in JobEvent.Kind]),
        ],
        responses={200: EventOutput(many=True), **error_responses()},
        tags=["training"],
    )
    def get(self, request: Request, tenant_slug: str, job_id: int) -> Response:
        job = access_job(tenant=self.tenant, job_id=job_id)
        after = request.query_params.get("after", "0")
        kind = request.query_params.get("kind", "")
        if not after.isdigit() or len(after) > 9:
            raise ValidationError({"after": ["A non-negative integer."]})
        if "kind" in request.query_params and kind not in JobEvent.Kind.values:
            raise ValidationError({"kind": [f"One of {', '.join(JobEvent.Kind.values)}."]})
        qs = selectors.job_events(job=job, after=int(after), kind=kind)
        return paginated(self, request, qs, EventOutput, ordering="seq")


class QuotaApi(TenantApi):
    permission_actions = {"GET": "job.list"}

    @extend_schema(
        operation_id="training_quota",
        summary="The tenant's training quotas, this month's usage and how many jobs wait",
        responses={200: QuotaOutput, **error_responses()},
        tags=["training"],
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        return Response(QuotaOutput(selectors.tenant_overview(self.tenant.pk)).data)


class CatalogueApi(TenantApi):
    permission_actions = {"GET": "job.list"}

    @extend_schema(
        operation_id="training_catalogue",
        summary="What a training spec may name: the model registry (each model's inputs and parameters with "
        "types, bounds and defaults), optimizers and schedules",
        responses={200: CatalogueOutput, **error_responses()},
        tags=["training"],
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        return Response(CatalogueOutput(selectors.training_catalogue()).data)


class ModelListApi(TenantApi):
    pagination_class = CursorPagination
    permission_actions = {"GET": "model.list"}

    @extend_schema(
        operation_id="models_list",
        parameters=[OpenApiParameter("name", str)],
        responses={200: ModelOutput(many=True), **error_responses()},
        tags=["models"],
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        name = request.query_params.get("name", "")[:200]
        return paginated(self, request, selectors.model_list(tenant=self.tenant, name=name), ModelOutput)


class ModelDetailApi(TenantApi):
    permission_actions = {"GET": "model.list"}

    @extend_schema(operation_id="models_retrieve", responses={200: ModelOutput, **error_responses()}, tags=["models"])
    def get(self, request: Request, tenant_slug: str, model_id: int) -> Response:
        return Response(ModelOutput(access_model(tenant=self.tenant, model_id=model_id)).data)


class ModelDownloadApi(TenantApi):
    permission_actions = {"GET": "model.download"}

    @extend_schema(
        operation_id="models_download",
        summary="The weights as safetensors (decrypted on the fly); audited",
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, **error_responses()},
        tags=["models"],
    )
    def get(self, request: Request, tenant_slug: str, model_id: int) -> Any:
        mv = access_model(tenant=self.tenant, model_id=model_id)
        reader = services.model_download(tenant=self.tenant, model=mv)

        def chunks() -> Any:
            with reader:
                while block := reader.read(1024 * 1024):
                    yield block

        resp = StreamingHttpResponse(chunks(), content_type="application/octet-stream")
        resp["Content-Disposition"] = f'attachment; filename="model-{mv.pk}-v{mv.version}.safetensors"'
        resp["Content-Length"] = str(mv.size_bytes)
        resp["Cache-Control"] = "no-store"
        return resp


class ModelExportApi(TenantApi):
    permission_actions = {"GET": "model.download"}

    @extend_schema(
        operation_id="models_export",
        summary="The model as TorchScript or ONNX for edge inference (input: the encoded tensor); audited",
        parameters=[OpenApiParameter("file_format", str, enum=list(services.EXPORT_FORMATS), required=True)],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, **error_responses(422)},
        tags=["models"],
    )
    def get(self, request: Request, tenant_slug: str, model_id: int) -> Any:
        fmt = request.query_params.get("file_format", "")
        if fmt not in services.EXPORT_FORMATS:
            raise ValidationError({"file_format": [f"One of {', '.join(services.EXPORT_FORMATS)}."]})
        mv = access_model(tenant=self.tenant, model_id=model_id)
        data = services.model_export(tenant=self.tenant, model=mv, fmt=fmt)
        suffix = services.EXPORT_FORMATS[fmt]
        resp = HttpResponse(data, content_type="application/octet-stream")
        resp["Content-Disposition"] = f'attachment; filename="model-{mv.pk}-v{mv.version}.{suffix}"'
        resp["Cache-Control"] = "no-store"
        return resp


class ModelPredictApi(TenantApi):
    permission_actions = {"POST": "model.predict"}

    class Input(PredictInput):
        pass

    class Output(PredictOutput):
        pass

    @extend_schema(
        operation_id="models_predict",
        summary=f"Predict up to {services.PREDICT_MAX_ROWS} rows with a model version (small models only)",
        request=Input,
        responses={200: Output, **error_responses(415, 422)},
        tags=["models"],
    )
    def post(self, request: Request, tenant_slug: str, model_id: int) -> Response:
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        mv = access_model(tenant=self.tenant, model_id=model_id)
        if "images" in data.validated_data:
            try:
                rows: list[Any] = [base64.b64decode(s, validate=True) for s in data.validated_data["images"]]
            except (binascii.Error, ValueError) as exc:
                raise ValidationError({"images": ["Not valid base64."]}) from exc
        else:
            rows = data.validated_data["rows"]
        predictions = services.model_predict(tenant=self.tenant, model=mv, rows=rows)
        return Response({"model": mv.pk, "predictions": predictions})
