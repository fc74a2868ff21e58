"""Versions: upload a file as a new version, PII report, de-identify, preview and download."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.common.api import StrictSerializer, error_responses, paginated
from apps.common.idempotency import idempotent
from apps.common.pagination import CursorPagination
from apps.common.parsers import MultiPartParser
from apps.datasets import selectors, services
from apps.datasets.access import access_dataset, access_version
from apps.datasets.api.serializers import FORMAT_PARAM, ROWS_PARAM, PreviewOutput, VersionOutput
from apps.datasets.api.streaming import format_param, preview, require_ready, rows_param, stream_version
from apps.datasets.models import DatasetVersion
from apps.datasets.uploads import SpooledUpload, SpoolingUploadHandler
from apps.tenancy.api.base import TenantApi

UploadForm = inline_serializer(
    "DatasetUploadForm",
    {
        "file": serializers.FileField(help_text="CSV, TSV, Parquet, JSON Lines, or a zip of images with labels.csv"),
        "label": serializers.CharField(required=False, help_text="Label column"),
        "task": serializers.CharField(required=False),
        "schema": serializers.CharField(required=False, help_text="Declared schema as JSON (columns, label, task)"),
        "on_row_error": serializers.ChoiceField(choices=["reject", "skip"], required=False),
        "format": serializers.ChoiceField(choices=["csv", "tsv", "parquet", "jsonl", "zip"], required=False),
        "encoding": serializers.CharField(required=False),
        "delimiter": serializers.CharField(required=False),
    },
)


def _form_options(data: Any) -> dict[str, Any]:
    allowed = {"label", "task", "schema", "on_row_error", "format", "encoding", "delimiter", "file"}
    unknown = sorted(set(data.keys()) - allowed)
    if unknown:
        raise ValidationError({k: ["Unknown field."] for k in unknown})
    raw: dict[str, Any] = {k: data.get(k) for k in allowed - {"file"} if data.get(k) not in (None, "")}
    if "schema" in raw:
        try:
            raw["schema"] = json.loads(raw["schema"])
        except (TypeError, ValueError):
            raise ValidationError({"schema": ["Must be JSON."]}) from None
    return services.clean_options(raw)


class VersionListApi(TenantApi):
    pagination_class = CursorPagination
    permission_actions = {"GET": "dataset.list", "POST": "dataset.create"}
    parser_classes = [MultiPartParser]  # type: ignore[misc]

    @extend_schema(
        operation_id="dataset_versions_list",
        parameters=[OpenApiParameter("kind", str, enum=["raw", "deidentified"])],
        responses={200: VersionOutput(many=True), **error_responses()},
        tags=["datasets"],
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id, include_deleted=True)
        kind = request.query_params.get("kind", "")
        if kind not in ("", "raw", "deidentified"):
            raise ValidationError({"kind": ["One of raw, deidentified."]})
        return paginated(
            self, request, selectors.version_list(dataset=ds, kind=kind), VersionOutput, ordering="-number"
        )

    def initialize_request(self, request: Any, *args: Any, **kwargs: Any) -> Request:
        # Before authentication: the CSRF check of a session POST reads the multipart body.
        if request.method == "POST":
            request.upload_handlers = [
                SpoolingUploadHandler(request, max_bytes=settings.COHORT_DATASET_MAX_UPLOAD_BYTES)
            ]
        return super().initialize_request(request, *args, **kwargs)

    @extend_schema(
        operation_id="dataset_versions_upload",
        summary="Upload a file (multipart, streamed and encrypted as it arrives); validated at once when small",
        request={"multipart/form-data": UploadForm},
        responses={
            201: VersionOutput,
            202: OpenApiResponse(VersionOutput, description="Large file: processing on a worker"),
            **error_responses(409, 413, 415, 422),
        },
        tags=["datasets"],
    )
    def post(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        spooled = [f for f in request.FILES.values() if isinstance(f, SpooledUpload)]
        try:
            ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id)
            upload = request.FILES.get("file")
            if not isinstance(upload, SpooledUpload) or len(request.FILES) != 1:
                raise ValidationError({"file": ["Send exactly one file, in the field named 'file'."]})
            options = _form_options(request.data)
            staged = upload.restage(self.tenant.pk)
        finally:
            for f in spooled:
                f.discard()
        version = services.upload_single(
            tenant=self.tenant,
            dataset=ds,
            created_by=request.user,
            filename=upload.name or "upload",
            staged=staged,
            options=options,
        )
        code = status.HTTP_201_CREATED if version.status == DatasetVersion.Status.READY else status.HTTP_202_ACCEPTED
        return Response(VersionOutput(version).data, status=code)


class VersionDetailApi(TenantApi):
    permission_actions = {"GET": "dataset.list"}

    @extend_schema(
        operation_id="dataset_versions_retrieve", responses={200: VersionOutput, **error_responses()}, tags=["datasets"]
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int, version_id: int) -> Response:
        ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id, include_deleted=True)
        return Response(VersionOutput(access_version(tenant=self.tenant, dataset=ds, version_id=version_id)).data)


class PiiReportApi(TenantApi):
    permission_actions = {"GET": "dataset.pii_report"}

    @extend_schema(
        operation_id="dataset_versions_pii_report",
        summary="PII scan of a raw version: detections per column, masked examples, a proposed policy",
        responses={200: OpenApiTypes.OBJECT, **error_responses()},
        tags=["datasets"],
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int, version_id: int) -> Response:
        ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id, include_deleted=True)
        v = access_version(tenant=self.tenant, dataset=ds, version_id=version_id)
        return Response({"version_id": v.pk, "kind": v.kind, "report": v.pii_report})


class DeidentifyApi(TenantApi):
    permission_actions = {"POST": "dataset.deidentify"}

    class SchemaConfirm(StrictSerializer):
        label = serializers.CharField(max_length=200, required=False, allow_null=True)  # type: ignore[assignment]
        task = serializers.CharField(max_length=50, required=False, allow_null=True)
        roles = serializers.DictField(
            child=serializers.ChoiceField(choices=["feature", "label", "identifier", "quasi_identifier", "ignore"]),
            required=False,
        )

    class Input(StrictSerializer):
        policy = serializers.DictField(
            help_text="{columns: {name: {action, params}}, quasi_identifiers: [...], k: int|null}; "
            "use the PII report's proposed policy as a start"
        )
        schema = serializers.DictField(
            required=False,
            help_text="Confirm or correct the inferred schema for this version: {label, task, roles: {column: role}}",
        )

    @extend_schema(
        operation_id="dataset_versions_deidentify",
        summary="Apply a column policy to a raw version: creates a de-identified version",
        request=Input,
        responses={
            201: VersionOutput,
            202: OpenApiResponse(VersionOutput, description="Large dataset: de-identifying on a worker"),
            **error_responses(409, 415, 422),
        },
        tags=["datasets"],
    )
    def post(self, request: Request, tenant_slug: str, dataset_id: int, version_id: int) -> Response:
        ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id)
        raw = access_version(tenant=self.tenant, dataset=ds, version_id=version_id)

        def create() -> Response:
            data = self.Input(data=request.data)
            data.is_valid(raise_exception=True)
            confirm = None
            if "schema" in data.validated_data:
                conf = self.SchemaConfirm(data=data.validated_data["schema"])
                if not conf.is_valid():
                    raise ValidationError({"schema": conf.errors})
                confirm = dict(conf.validated_data)
            v = services.deidentify(
                tenant=self.tenant,
                raw=raw,
                policy=data.validated_data["policy"],
                created_by=request.user,
                confirm=confirm,
            )
            ready = v.status == DatasetVersion.Status.READY
            return Response(
                VersionOutput(v).data, status=status.HTTP_201_CREATED if ready else status.HTTP_202_ACCEPTED
            )

        return idempotent(request, self.tenant.pk, create)


def _read_check(view: TenantApi, version: DatasetVersion) -> None:
    """Raw versions need dataset.read_raw (owner/admin); de-identified ones dataset.download."""
    from apps.common.errors import Forbidden
    from apps.tenancy import policy

    if version.kind == DatasetVersion.Kind.RAW:
        allowed = view.membership is not None and policy.role_allows(view.role, "dataset.read_raw")
        if not allowed:
            raise Forbidden(
                "Raw versions are readable only by the owner tenant's owners and admins.",
                reason="raw_read",
                tenant_id=view.tenant.pk,
                action="dataset.read_raw",
            )
    require_ready(version)


def _audited_own_read(
    view: TenantApi, dataset_id: int, version_id: int, action: str, details: dict[str, Any]
) -> DatasetVersion:
    """A read of one of the tenant's own versions: access, the raw-read rule, one audit event
    (``dataset.raw_read`` for a raw version, else ``action``)."""
    ds = access_dataset(tenant=view.tenant, dataset_id=dataset_id)
    v = access_version(tenant=view.tenant, dataset=ds, version_id=version_id)
    _read_check(view, v)
    services.version_read_recorded(tenant=view.tenant, dataset=ds, version=v, action=action, details=details)
    return v


class VersionPreviewApi(TenantApi):
    permission_actions = {"GET": "dataset.download"}

    @extend_schema(
        operation_id="dataset_versions_preview",
        summary="First rows (raw: owners/admins only). Every preview is audited.",
        parameters=[ROWS_PARAM],
        responses={200: PreviewOutput, **error_responses(409)},
        tags=["datasets"],
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int, version_id: int) -> Response:
        rows = rows_param(request)
        v = _audited_own_read(self, dataset_id, version_id, "dataset.previewed", {"rows": rows, "mode": "preview"})
        return Response(preview(v, rows, v.data_key))


class VersionDownloadApi(TenantApi):
    permission_actions = {"GET": "dataset.download"}

    @extend_schema(
        operation_id="dataset_versions_download",
        summary="Streamed download, decrypted on the fly (raw: owners/admins only). Audited.",
        parameters=[FORMAT_PARAM],
        responses={(200, "application/vnd.apache.parquet"): OpenApiTypes.BINARY, **error_responses(409)},
        tags=["datasets"],
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int, version_id: int) -> Any:
        fmt = format_param(request)
        v = _audited_own_read(self, dataset_id, version_id, "dataset.downloaded", {"format": fmt, "mode": "download"})
        return stream_version(v, fmt, v.data_key)
