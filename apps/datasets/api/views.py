"""Datasets REST API: datasets, versions (multipart upload), resumable uploads, reports,
de-identification, preview and streamed download, grants, privacy budget, shared datasets."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import parsers, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.audit.services import audit_record
from apps.common.api import StrictSerializer, error_responses, paginated
from apps.common.errors import AccessDenied, Conflict, RangeNotSatisfiable
from apps.common.idempotency import idempotent
from apps.common.pagination import CursorPagination
from apps.common.parsers import MultiPartParser
from apps.datasets import selectors, services
from apps.datasets.access import access_dataset, access_grant, access_reservation, access_upload, access_version
from apps.datasets.models import BudgetReservation, Dataset, DatasetGrant, DatasetVersion, PrivacyBudget
from apps.datasets.storage import open_decrypted
from apps.datasets.uploads import SpooledUpload, SpoolingUploadHandler
from apps.tenancy.api.base import TenantApi
from apps.tenancy.models import Tenant

PREVIEW_MAX_ROWS = 100


# --- serializers ---------------------------------------------------------------------------------


class DatasetOutput(serializers.ModelSerializer):
    created_by = serializers.EmailField(source="created_by.email", allow_null=True, default=None)
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = [
            "id",
            "name",
            "description",
            "status",
            "created_by",
            "created_at",
            "updated_at",
            "deleted_at",
            "purge_after",
            "latest_version",
        ]

    def get_latest_version(self, obj: Dataset) -> dict[str, Any] | None:
        v = DatasetVersion.objects.filter(dataset=obj).order_by("-number").first()
        if v is None:
            return None
        return {"id": v.pk, "number": v.number, "kind": v.kind, "status": v.status, "rows": v.rows}


class VersionOutput(serializers.ModelSerializer):
    source_version = serializers.IntegerField(source="source_version_id", allow_null=True)
    created_by = serializers.EmailField(source="created_by.email", allow_null=True, default=None)
    grantee_view = serializers.SerializerMethodField(
        help_text="De-identified ready versions: exactly what a grantee sees of this version on "
        "shared-datasets (schema, rows, rounded null fractions, class counts below k suppressed); null otherwise"
    )

    class Meta:
        model = DatasetVersion
        fields = [
            "id",
            "number",
            "kind",
            "status",
            "source_version",
            "format",
            "original_filename",
            "upload_sha256",
            "content_sha256",
            "schema",
            "validation",
            "policy",
            "deid_report",
            "options",
            "rows",
            "upload_bytes",
            "size_bytes",
            "stored_bytes",
            "error",
            "created_by",
            "created_at",
            "ready_at",
            "grantee_view",
        ]

    def get_grantee_view(self, obj: DatasetVersion) -> dict[str, Any] | None:
        if obj.kind != DatasetVersion.Kind.DEIDENTIFIED or obj.status != DatasetVersion.Status.READY:
            return None
        return selectors.grantee_view(obj)


class UploadOutput(serializers.Serializer):
    id = serializers.IntegerField()
    dataset_id = serializers.IntegerField()
    filename = serializers.CharField()
    size = serializers.IntegerField()
    status = serializers.CharField()
    received = serializers.ListField(child=serializers.ListField(child=serializers.IntegerField()))
    received_bytes = serializers.IntegerField()
    version_id = serializers.IntegerField(allow_null=True)
    expires_at = serializers.DateTimeField()


def upload_data(session: Any) -> dict[str, Any]:
    ranges = services.upload_received(session)
    return {
        "id": session.pk,
        "dataset_id": session.dataset_id,
        "filename": session.filename,
        "size": session.size,
        "status": session.status,
        "received": [list(r) for r in ranges],
        "received_bytes": sum(b - a for a, b in ranges),
        "version_id": session.version_id,
        "expires_at": session.expires_at,
    }


class GrantOutput(serializers.ModelSerializer):
    grantee = serializers.SlugField(source="grantee.slug")
    status = serializers.CharField()
    dataset_id = serializers.IntegerField()

    class Meta:
        model = DatasetGrant
        fields = [
            "id",
            "dataset_id",
            "grantee",
            "permission",
            "status",
            "note",
            "expires_at",
            "revoked_at",
            "epsilon_allotment",
            "delta_allotment",
            "created_at",
        ]


class ReservationOutput(serializers.ModelSerializer):
    consumer = serializers.SlugField(source="consumer.slug")

    class Meta:
        model = BudgetReservation
        fields = [
            "id",
            "consumer",
            "state",
            "epsilon",
            "delta",
            "epsilon_spent",
            "delta_spent",
            "purpose",
            "reference",
            "created_at",
            "settled_at",
        ]


class BudgetOutput(serializers.Serializer):
    dataset_id = serializers.IntegerField()
    epsilon_total = serializers.DecimalField(max_digits=12, decimal_places=6)
    delta_total = serializers.DecimalField(max_digits=14, decimal_places=12)
    epsilon_spent = serializers.DecimalField(max_digits=12, decimal_places=6)
    delta_spent = serializers.DecimalField(max_digits=14, decimal_places=12)
    epsilon_reserved = serializers.DecimalField(max_digits=12, decimal_places=6)
    delta_reserved = serializers.DecimalField(max_digits=14, decimal_places=12)
    epsilon_remaining = serializers.DecimalField(max_digits=12, decimal_places=6)
    delta_remaining = serializers.DecimalField(max_digits=14, decimal_places=12)
    composition = serializers.CharField()


def budget_data(budget: PrivacyBudget) -> dict[str, Any]:
    u = services.budget_usage(budget)
    return {
        "dataset_id": budget.dataset_id,
        "epsilon_total": budget.epsilon_total,
        "delta_total": budget.delta_total,
        **u,
        "epsilon_remaining": budget.epsilon_total - u["epsilon_spent"] - u["epsilon_reserved"],
        "delta_remaining": budget.delta_total - u["delta_spent"] - u["delta_reserved"],
        "composition": "basic",
    }


class SharedDatasetOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    owner = serializers.SlugField()
    permissions = serializers.ListField(child=serializers.CharField())
    version = serializers.DictField(
        allow_null=True,
        help_text="The newest de-identified version: id, number, rows, schema (name, type, role), content_sha256, "
        "and statistics safe by construction (rounded null fractions, class counts below k suppressed; "
        "never minimum, maximum, mean or std)",
    )


def _schema_for_grantee(schema: dict[str, Any] | None) -> dict[str, Any]:
    schema = schema or {}
    cols = [
        {k: c.get(k) for k in ("name", "type", "role", "nullable")}
        for c in schema.get("columns") or []
        if isinstance(c, dict)
    ]
    return {"columns": cols, "label": schema.get("label"), "task": schema.get("task")}


def shared_data(ds: Dataset, perms: set[str], version: DatasetVersion | None) -> dict[str, Any]:
    return {
        "id": ds.pk,
        "name": ds.name,
        "description": ds.description,
        "owner": ds.tenant.slug,
        "permissions": sorted(perms),
        "version": None
        if version is None
        else {
            "id": version.pk,
            "number": version.number,
            "rows": version.rows,
            "schema": _schema_for_grantee(version.schema),
            "statistics": selectors.grantee_view(version),
            "content_sha256": version.content_sha256,
        },
    }


PreviewOutput = inline_serializer(
    "DatasetPreview",
    {
        "version_id": serializers.IntegerField(),
        "kind": serializers.CharField(),
        "columns": serializers.ListField(child=serializers.CharField()),
        "rows": serializers.ListField(child=serializers.ListField()),
    },
)
FORMAT_PARAM = OpenApiParameter(
    "file_format",
    str,
    enum=["parquet", "csv"],
    description="Download format (image datasets always download as their zip)",
)
ROWS_PARAM = OpenApiParameter("rows", int, description=f"Rows to preview (1-{PREVIEW_MAX_ROWS}, default 20)")


# --- helpers -------------------------------------------------------------------------------------


class OctetStreamParser(parsers.BaseParser):
    """Hands the request stream to the view unread (chunks are encrypted as they are read)."""

    media_type = "application/octet-stream"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return stream


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")


def _preview_images(reader: Any, rows: int) -> tuple[list[str], list[list[Any]]]:
    """The first images of a (validated) zip with their labels, read in place from the decrypting
    reader: member names and labels only, never image bytes."""
    import zipfile

    with zipfile.ZipFile(reader) as zf:
        names = [n for n in zf.namelist() if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith("__MACOSX")]
        labels: dict[str, str] = {}
        if "labels.csv" in zf.namelist():
            with zf.open("labels.csv") as fh:
                for rec in csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8-sig")):
                    labels[rec.get("file", "")] = rec.get("label", "")
    out = [[n, labels.get(n, n.rsplit("/", 1)[0] if "/" in n else "")] for n in names[:rows]]
    return ["image", "label"], out


def _preview(version: DatasetVersion, rows: int, key: Any) -> dict[str, Any]:
    reader = open_decrypted(version.tenant_id, services.VERSION_KIND, version.pk, version.storage_name, key)
    if version.format == "zip":
        with reader:
            cols, img_rows = _preview_images(reader, rows)
        return {"version_id": version.pk, "kind": version.kind, "columns": cols, "rows": img_rows}
    with reader:
        pf = pq.ParquetFile(pa.PythonFile(reader, mode="r"), pre_buffer=False)
        table = pa.Table.from_batches(list(_take(pf.iter_batches(batch_size=rows), rows)), schema=pf.schema_arrow)
    cols = table.column_names
    out_rows = [[_jsonable(v) for v in row.values()] for row in table.to_pylist()]
    return {"version_id": version.pk, "kind": version.kind, "columns": cols, "rows": out_rows}


def _take(batches: Iterator[pa.RecordBatch], n: int) -> Iterator[pa.RecordBatch]:
    left = n
    for b in batches:
        if left <= 0:
            return
        yield b.slice(0, left)
        left -= b.num_rows


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return str(v)


def _rows_param(request: Request) -> int:
    raw = request.query_params.get("rows", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= PREVIEW_MAX_ROWS:
        raise ValidationError({"rows": [f"An integer from 1 to {PREVIEW_MAX_ROWS}."]})
    return int(raw)


def _stream(version: DatasetVersion, fmt: str, key: Any) -> StreamingHttpResponse:
    """Decrypt on the fly; Parquet as stored, or CSV converted batch by batch."""

    def parquet_chunks() -> Iterator[bytes]:
        reader = open_decrypted(version.tenant_id, services.VERSION_KIND, version.pk, version.storage_name, key)
        with reader:
            while block := reader.read(1024 * 1024):
                yield block

    def csv_chunks() -> Iterator[bytes]:
        reader = open_decrypted(version.tenant_id, services.VERSION_KIND, version.pk, version.storage_name, key)
        with reader:
            pf = pq.ParquetFile(pa.PythonFile(reader, mode="r"), pre_buffer=False)
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(pf.schema_arrow.names)
            for batch in pf.iter_batches(batch_size=16384):
                for row in batch.to_pylist():
                    w.writerow(["" if v is None else v for v in row.values()])
                yield buf.getvalue().encode()
                buf.seek(0)
                buf.truncate()
            yield buf.getvalue().encode()

    if version.format == "zip":
        fmt = "zip"  # image datasets download as the validated zip
    ds_name = re.sub(r"[^A-Za-z0-9._-]+", "-", version.dataset.name)[:80] or "dataset"
    filename = f"{ds_name}-v{version.number}.{fmt}"
    content_type = {
        "parquet": "application/vnd.apache.parquet",
        "csv": "text/csv; charset=utf-8",
        "zip": "application/zip",
    }[fmt]
    resp = StreamingHttpResponse(csv_chunks() if fmt == "csv" else parquet_chunks(), content_type=content_type)
    resp["Content-Disposition"] = f'attachment; filename="{filename}"'
    resp["Cache-Control"] = "no-store"
    if fmt != "csv":
        resp["Content-Length"] = str(version.size_bytes)
    return resp


def _format_param(request: Request) -> str:
    # Not "format": DRF reserves that query parameter for renderer selection.
    fmt = request.query_params.get("file_format", "parquet")
    if fmt not in ("parquet", "csv"):
        raise ValidationError({"file_format": ["One of parquet, csv."]})
    return fmt


def _ready(version: DatasetVersion) -> None:
    if version.status != DatasetVersion.Status.READY:
        raise Conflict(f"This version is {version.status}; only ready versions can be read.")


# --- datasets ------------------------------------------------------------------------------------


class DatasetListApi(TenantApi):
    pagination_class = CursorPagination
    permission_actions = {"GET": "dataset.list", "POST": "dataset.create"}

    class Input(StrictSerializer):
        name = serializers.CharField(max_length=200, min_length=1)
        description = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")

    @extend_schema(
        operation_id="datasets_list",
        parameters=[
            OpenApiParameter("q", str, description="Search in name and description"),
            OpenApiParameter("status", str, enum=["active", "deleted", "purged", "all"]),
        ],
        responses={200: DatasetOutput(many=True), **error_responses()},
        tags=["datasets"],
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        st = request.query_params.get("status", "active")
        if st not in ("active", "deleted", "purged", "all"):
            raise ValidationError({"status": ["One of active, deleted, purged, all."]})
        q = request.query_params.get("q", "")[:200]
        return paginated(self, request, selectors.dataset_list(tenant=self.tenant, q=q, status=st), DatasetOutput)

    @extend_schema(
        operation_id="datasets_create",
        request=Input,
        responses={201: DatasetOutput, **error_responses(409, 415, 422)},
        tags=["datasets"],
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        def create() -> Response:
            data = self.Input(data=request.data)
            data.is_valid(raise_exception=True)
            ds = services.dataset_create(tenant=self.tenant, created_by=request.user, **data.validated_data)
            return Response(DatasetOutput(ds).data, status=status.HTTP_201_CREATED)

        return idempotent(request, self.tenant.pk, create)


class DatasetDetailApi(TenantApi):
    permission_actions = {"GET": "dataset.list", "PATCH": "dataset.update", "DELETE": "dataset.delete"}

    class Input(StrictSerializer):
        name = serializers.CharField(max_length=200, min_length=1, required=False)
        description = serializers.CharField(max_length=5000, required=False, allow_blank=True)

    @extend_schema(
        operation_id="datasets_retrieve", responses={200: DatasetOutput, **error_responses()}, tags=["datasets"]
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id, include_deleted=True)
        return Response(DatasetOutput(ds).data)

    @extend_schema(
        operation_id="datasets_update",
        request=Input,
        responses={200: DatasetOutput, **error_responses(409, 415)},
        tags=["datasets"],
    )
    def patch(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        ds = services.dataset_update(tenant=self.tenant, dataset=ds, **data.validated_data)
        return Response(DatasetOutput(ds).data)

    @extend_schema(
        operation_id="datasets_delete",
        summary="Delete (soft): hidden at once, grants revoked, data purged after the retention period",
        responses={200: DatasetOutput, **error_responses(409)},
        tags=["datasets"],
    )
    def delete(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id)
        return Response(DatasetOutput(services.dataset_delete(tenant=self.tenant, dataset=ds)).data)


# --- versions and uploads ------------------------------------------------------------------------


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
    _ready(version)


def _audited_own_read(
    view: TenantApi, dataset_id: int, version_id: int, action: str, details: dict[str, Any]
) -> DatasetVersion:
    """A read of one of the tenant's own versions: access, the raw-read rule, one audit event
    (``dataset.raw_read`` for a raw version, else ``action``)."""
    ds = access_dataset(tenant=view.tenant, dataset_id=dataset_id)
    v = access_version(tenant=view.tenant, dataset=ds, version_id=version_id)
    _read_check(view, v)
    audit_record(
        action="dataset.raw_read" if v.kind == DatasetVersion.Kind.RAW else action,
        tenant=view.tenant,
        target=v,
        details={"dataset_id": ds.pk, "bytes": v.size_bytes, **details},
    )
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
        rows = _rows_param(request)
        v = _audited_own_read(self, dataset_id, version_id, "dataset.previewed", {"rows": rows, "mode": "preview"})
        return Response(_preview(v, rows, v.data_key))


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
        fmt = _format_param(request)
        v = _audited_own_read(self, dataset_id, version_id, "dataset.downloaded", {"format": fmt, "mode": "download"})
        return _stream(v, fmt, v.data_key)


class UploadListApi(TenantApi):
    permission_actions = {"POST": "dataset.create"}

    class Input(StrictSerializer):
        dataset_id = serializers.IntegerField(min_value=1)
        filename = serializers.CharField(max_length=255)
        size = serializers.IntegerField(min_value=1)
        options = serializers.DictField(required=False, default=dict)

    @extend_schema(
        operation_id="uploads_create",
        summary="Start a resumable upload: then PUT chunks at offsets and POST complete with the SHA-256",
        request=Input,
        responses={201: UploadOutput, **error_responses(409, 413, 415, 422)},
        tags=["uploads"],
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        def create() -> Response:
            data = self.Input(data=request.data)
            data.is_valid(raise_exception=True)
            ds = access_dataset(tenant=self.tenant, dataset_id=data.validated_data["dataset_id"])
            options = services.clean_options(data.validated_data["options"])
            session = services.upload_session_create(
                tenant=self.tenant,
                dataset=ds,
                created_by=request.user,
                filename=data.validated_data["filename"],
                size=data.validated_data["size"],
                options=options,
            )
            return Response(UploadSerializerData(session), status=status.HTTP_201_CREATED)

        return idempotent(request, self.tenant.pk, create)


def UploadSerializerData(session: Any) -> Any:
    return UploadOutput(upload_data(session)).data


_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class UploadDetailApi(TenantApi):
    permission_actions = {"GET": "dataset.create", "PUT": "dataset.create", "DELETE": "dataset.create"}
    parser_classes = [OctetStreamParser]  # type: ignore[misc]

    @extend_schema(
        operation_id="uploads_retrieve",
        summary="Received ranges (to resume after a dropped connection)",
        responses={200: UploadOutput, **error_responses()},
        tags=["uploads"],
    )
    def get(self, request: Request, tenant_slug: str, upload_id: int) -> Response:
        return Response(UploadSerializerData(access_upload(tenant=self.tenant, upload_id=upload_id)))

    @extend_schema(
        operation_id="uploads_put_chunk",
        summary="Store one chunk at a byte offset (?offset=N or Content-Range); retrying a chunk is safe",
        parameters=[OpenApiParameter("offset", int, description="Byte offset (or send Content-Range)")],
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses={200: UploadOutput, **error_responses(409, 413, 415, 416, 422)},
        tags=["uploads"],
    )
    def put(self, request: Request, tenant_slug: str, upload_id: int) -> Response:
        session = access_upload(tenant=self.tenant, upload_id=upload_id)
        length_raw = request.META.get("CONTENT_LENGTH") or ""
        if not length_raw.isdigit() or int(length_raw) < 1:
            raise ValidationError({"Content-Length": ["A chunk needs a positive Content-Length."]})
        length = int(length_raw)
        crange = request.META.get("HTTP_CONTENT_RANGE")
        if crange:
            m = _RANGE_RE.match(crange.strip())
            if not m or int(m[2]) - int(m[1]) + 1 != length:
                raise ValidationError({"Content-Range": ["Use 'bytes first-last/total' matching Content-Length."]})
            if m[3] != "*" and int(m[3]) != session.size:
                raise RangeNotSatisfiable(
                    f"Content-Range total {m[3]} is not the declared size ({session.size} bytes).", size=session.size
                )
            offset = int(m[1])
        else:
            raw = request.query_params.get("offset", "")
            if not raw.isdigit():
                raise ValidationError({"offset": ["Give ?offset=N (bytes) or a Content-Range header."]})
            offset = int(raw)
        services.upload_part_put(tenant=self.tenant, session=session, offset=offset, stream=request.data, length=length)
        return Response(UploadSerializerData(session))

    @extend_schema(
        operation_id="uploads_abort", responses={200: UploadOutput, **error_responses(409)}, tags=["uploads"]
    )
    def delete(self, request: Request, tenant_slug: str, upload_id: int) -> Response:
        session = access_upload(tenant=self.tenant, upload_id=upload_id)
        return Response(UploadSerializerData(services.upload_abort(tenant=self.tenant, session=session)))


class UploadCompleteApi(TenantApi):
    permission_actions = {"POST": "dataset.create"}

    class Input(StrictSerializer):
        sha256 = serializers.RegexField(r"^[0-9a-fA-F]{64}$", help_text="SHA-256 of the whole file (hex)")

    @extend_schema(
        operation_id="uploads_complete",
        summary="Check the chunks and the SHA-256, then create the version (201 processed, 202 on a worker)",
        request=Input,
        responses={
            201: VersionOutput,
            202: OpenApiResponse(VersionOutput, description="Large file: processing on a worker"),
            **error_responses(409, 415, 422),
        },
        tags=["uploads"],
    )
    def post(self, request: Request, tenant_slug: str, upload_id: int) -> Response:
        session = access_upload(tenant=self.tenant, upload_id=upload_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.upload_complete(
            tenant=self.tenant, session=session, sha256=data.validated_data["sha256"], created_by=request.user
        )
        code = status.HTTP_201_CREATED if version.status == DatasetVersion.Status.READY else status.HTTP_202_ACCEPTED
        return Response(VersionOutput(version).data, status=code)


# --- grants --------------------------------------------------------------------------------------


class GrantListApi(TenantApi):
    pagination_class = CursorPagination
    permission_actions = {"GET": "grant.list", "POST": "grant.create"}

    class Input(StrictSerializer):
        grantee = serializers.SlugField(max_length=50, help_text="The other tenant's slug")
        permission = serializers.ChoiceField(choices=DatasetGrant.Permission.choices)
        expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
        note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
        epsilon_allotment = serializers.DecimalField(
            max_digits=12,
            decimal_places=6,
            min_value=Decimal(0),
            max_value=Decimal(1000),
            required=False,
            allow_null=True,
            default=None,
            help_text="Process grants: the grantee's share of the dataset's ε budget (null: none)",
        )
        delta_allotment = serializers.DecimalField(
            max_digits=14,
            decimal_places=12,
            min_value=Decimal(0),
            max_value=Decimal("0.01"),
            required=False,
            allow_null=True,
            default=None,
            help_text="Process grants: the grantee's share of the dataset's δ budget (null: none)",
        )

    @extend_schema(
        operation_id="dataset_grants_list",
        responses={200: GrantOutput(many=True), **error_responses()},
        tags=["grants"],
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id, include_deleted=True)
        return paginated(self, request, selectors.grant_list(dataset=ds), GrantOutput)

    @extend_schema(
        operation_id="dataset_grants_create",
        summary="Grant another tenant process (train, never read) or download",
        request=Input,
        responses={201: GrantOutput, **error_responses(409, 415, 422)},
        tags=["grants"],
    )
    def post(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id)

        def create() -> Response:
            data = self.Input(data=request.data)
            data.is_valid(raise_exception=True)
            grantee = Tenant.objects.filter(slug=data.validated_data["grantee"], status=Tenant.Status.ACTIVE).first()
            if grantee is None:
                raise ValidationError({"grantee": ["No active tenant with this slug."]})
            grant = services.grant_create(
                tenant=self.tenant,
                dataset=ds,
                grantee=grantee,
                permission=data.validated_data["permission"],
                expires_at=data.validated_data["expires_at"],
                note=data.validated_data["note"],
                epsilon_allotment=data.validated_data["epsilon_allotment"],
                delta_allotment=data.validated_data["delta_allotment"],
                created_by=request.user,
            )
            return Response(GrantOutput(grant).data, status=status.HTTP_201_CREATED)

        return idempotent(request, self.tenant.pk, create)


class GrantDetailApi(TenantApi):
    permission_actions = {"GET": "grant.list", "DELETE": "grant.revoke"}

    @extend_schema(
        operation_id="dataset_grants_retrieve", responses={200: GrantOutput, **error_responses()}, tags=["grants"]
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int, grant_id: int) -> Response:
        ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id, include_deleted=True)
        return Response(GrantOutput(access_grant(tenant=self.tenant, dataset=ds, grant_id=grant_id)).data)

    @extend_schema(
        operation_id="dataset_grants_revoke",
        summary="Revoke (takes effect at once)",
        responses={200: GrantOutput, **error_responses(409)},
        tags=["grants"],
    )
    def delete(self, request: Request, tenant_slug: str, dataset_id: int, grant_id: int) -> Response:
        ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id, include_deleted=True)
        grant = access_grant(tenant=self.tenant, dataset=ds, grant_id=grant_id)
        return Response(GrantOutput(services.grant_revoke(tenant=self.tenant, grant=grant)).data)


# --- privacy budget ------------------------------------------------------------------------------


def _budget_dataset(view: TenantApi, dataset_id: int) -> tuple[Dataset, PrivacyBudget]:
    """The owner's dataset, or one granted to this tenant with ``process`` (grantees see the budget
    and their own reservations; only the owner reserves through the API)."""
    ds = Dataset.objects.filter(pk=dataset_id, status=Dataset.Status.ACTIVE).first()
    if ds is None:
        shared, perms = selectors.shared_dataset_get(tenant=view.tenant, dataset_id=dataset_id)
        if "process" not in perms:
            raise AccessDenied(
                reason="not_granted", tenant_id=view.tenant.pk, target_type="datasets.dataset", target_id=dataset_id
            )
        ds = shared
    return ds, selectors.budget_for(dataset=ds)


class BudgetApi(TenantApi):
    permission_actions = {"GET": "budget.view", "PUT": "budget.set"}

    class Input(StrictSerializer):
        epsilon = serializers.DecimalField(
            max_digits=12, decimal_places=6, min_value=Decimal("0.000001"), max_value=Decimal(1000)
        )
        delta = serializers.DecimalField(
            max_digits=14, decimal_places=12, min_value=Decimal(0), max_value=Decimal("0.01")
        )

    @extend_schema(
        operation_id="dataset_budget_retrieve",
        responses={200: BudgetOutput, **error_responses()},
        tags=["privacy-budget"],
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        _ds, budget = _budget_dataset(self, dataset_id)
        return Response(BudgetOutput(budget_data(budget)).data)

    @extend_schema(
        operation_id="dataset_budget_set",
        summary="Set the (ε, δ) budget (owner only)",
        request=Input,
        responses={200: BudgetOutput, **error_responses(409, 415)},
        tags=["privacy-budget"],
    )
    def put(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        ds = access_dataset(tenant=self.tenant, dataset_id=dataset_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        budget = services.budget_set(
            tenant=self.tenant,
            budget=selectors.budget_for(dataset=ds),
            epsilon=data.validated_data["epsilon"],
            delta=data.validated_data["delta"],
        )
        return Response(BudgetOutput(budget_data(budget)).data)


class ReservationListApi(TenantApi):
    pagination_class = CursorPagination
    permission_actions = {"GET": "budget.view", "POST": "budget.reserve"}

    class Input(StrictSerializer):
        epsilon = serializers.DecimalField(
            max_digits=12, decimal_places=6, min_value=Decimal(0), max_value=Decimal(1000)
        )
        delta = serializers.DecimalField(
            max_digits=14, decimal_places=12, min_value=Decimal(0), max_value=Decimal("0.01")
        )
        purpose = serializers.CharField(max_length=200)
        reference = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")

    @extend_schema(
        operation_id="dataset_budget_reservations_list",
        responses={200: ReservationOutput(many=True), **error_responses()},
        tags=["privacy-budget"],
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        _ds, budget = _budget_dataset(self, dataset_id)
        return paginated(
            self, request, selectors.reservation_list(tenant=self.tenant, budget=budget), ReservationOutput
        )

    @extend_schema(
        operation_id="dataset_budget_reserve",
        summary="Owner only: reserve (ε, δ) before a DP use; refused (422 budget_exceeded) past the budget. "
        "Grantees' reservations are made by the platform when a job or federation starts (403 here)",
        request=Input,
        responses={201: ReservationOutput, **error_responses(415, 422)},
        tags=["privacy-budget"],
    )
    def post(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        ds, budget = _budget_dataset(self, dataset_id)
        if ds.tenant_id != self.tenant.pk:
            from apps.common.errors import Forbidden

            raise Forbidden(
                "Reservations on a shared dataset are made by the platform when a job or federation starts, "
                "within the allotment of your grant.",
                reason="grantee_reservation",
                tenant_id=self.tenant.pk,
                action="budget.reserve",
                code="platform_reservation_only",
            )

        def create() -> Response:
            data = self.Input(data=request.data)
            data.is_valid(raise_exception=True)
            res = services.budget_reserve(
                consumer=self.tenant, budget=budget, created_by=request.user, **data.validated_data
            )
            return Response(ReservationOutput(res).data, status=status.HTTP_201_CREATED)

        return idempotent(request, self.tenant.pk, create)


class ReservationSettleApi(TenantApi):
    permission_actions = {"POST": "budget.reserve"}
    commit: bool = True

    class Input(StrictSerializer):
        epsilon_spent = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=Decimal(0), required=False)
        delta_spent = serializers.DecimalField(max_digits=14, decimal_places=12, min_value=Decimal(0), required=False)

    def post(self, request: Request, tenant_slug: str, dataset_id: int, reservation_id: int) -> Response:
        ds, _budget = _budget_dataset(self, dataset_id)
        res = access_reservation(tenant=self.tenant, dataset=ds, reservation_id=reservation_id)
        data = self.Input(data=request.data or {})
        data.is_valid(raise_exception=True)
        if not self.commit and data.validated_data:
            raise ValidationError({"non_field_errors": ["A release takes no body."]})
        res = services.budget_settle(consumer=self.tenant, reservation=res, commit=self.commit, **data.validated_data)
        return Response(ReservationOutput(res).data)


class ReservationCommitApi(ReservationSettleApi):
    commit = True

    @extend_schema(
        operation_id="dataset_budget_commit",
        summary="Commit the actual spend (≤ reserved)",
        request=ReservationSettleApi.Input,
        responses={200: ReservationOutput, **error_responses(409, 415)},
        tags=["privacy-budget"],
    )
    def post(self, request: Request, tenant_slug: str, dataset_id: int, reservation_id: int) -> Response:
        return super().post(request, tenant_slug, dataset_id, reservation_id)


class ReservationReleaseApi(ReservationSettleApi):
    commit = False

    @extend_schema(
        operation_id="dataset_budget_release",
        summary="Release a reservation unspent",
        request=None,
        responses={200: ReservationOutput, **error_responses(409)},
        tags=["privacy-budget"],
    )
    def post(self, request: Request, tenant_slug: str, dataset_id: int, reservation_id: int) -> Response:
        return super().post(request, tenant_slug, dataset_id, reservation_id)


# --- datasets shared with this tenant ------------------------------------------------------------


class SharedListApi(TenantApi):
    pagination_class = CursorPagination
    permission_actions = {"GET": "shared.list"}

    @extend_schema(
        operation_id="shared_datasets_list",
        parameters=[OpenApiParameter("q", str)],
        responses={200: SharedDatasetOutput(many=True), **error_responses()},
        tags=["shared-datasets"],
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        qs = selectors.shared_dataset_list(tenant=self.tenant, q=request.query_params.get("q", "")[:200])
        paginator = CursorPagination()
        paginator.ordering = "-id"
        page = paginator.paginate_queryset(qs, request, view=self) or []
        out = []
        for ds in page:
            perms = set(
                selectors.live_grants(grantee=self.tenant, dataset_id=ds.pk).values_list("permission", flat=True)
            )
            out.append(shared_data(ds, perms, selectors.latest_deidentified(dataset=ds, shared=True)))
        return paginator.get_paginated_response(SharedDatasetOutput(out, many=True).data)


class SharedDetailApi(TenantApi):
    permission_actions = {"GET": "shared.list"}

    @extend_schema(
        operation_id="shared_datasets_retrieve",
        summary="Schema and aggregate statistics of a dataset granted to this tenant (never rows)",
        responses={200: SharedDatasetOutput, **error_responses()},
        tags=["shared-datasets"],
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        ds, perms = selectors.shared_dataset_get(tenant=self.tenant, dataset_id=dataset_id)
        return Response(
            SharedDatasetOutput(shared_data(ds, perms, selectors.latest_deidentified(dataset=ds, shared=True))).data
        )


def _shared_download_version(view: TenantApi, dataset_id: int) -> tuple[Dataset, DatasetVersion]:
    from apps.common.errors import Forbidden

    ds, perms = selectors.shared_dataset_get(tenant=view.tenant, dataset_id=dataset_id)
    if "download" not in perms:
        raise Forbidden(
            "This tenant may process this dataset but not read it.",
            reason="process_only_grant",
            tenant_id=view.tenant.pk,
            action="shared.download",
        )
    v = selectors.latest_deidentified(dataset=ds, shared=True)
    if v is None:
        raise Conflict("The owner has not published a de-identified version yet.")
    return ds, v


def _audit_shared_read(view: TenantApi, ds: Dataset, v: DatasetVersion, details: dict[str, Any]) -> None:
    common = {"dataset_id": ds.pk, "version_id": v.pk, **details}
    audit_record(
        action="dataset.shared_read", tenant=view.tenant, target=v, details={**common, "owner": ds.tenant.slug}
    )
    audit_record(
        action="dataset.read_by_grantee", tenant=ds.tenant_id, target=v, details={**common, "grantee": view.tenant.slug}
    )


class SharedPreviewApi(TenantApi):
    permission_actions = {"GET": "shared.download"}

    @extend_schema(
        operation_id="shared_datasets_preview",
        parameters=[ROWS_PARAM],
        summary="First rows of the de-identified version (download grantees only; audited)",
        responses={200: PreviewOutput, **error_responses(409)},
        tags=["shared-datasets"],
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int) -> Response:
        ds, v = _shared_download_version(self, dataset_id)
        rows = _rows_param(request)
        _audit_shared_read(self, ds, v, {"mode": "preview", "rows": rows})
        return Response(_preview(v, rows, selectors.version_key(consumer=self.tenant, version=v)))


class SharedDownloadApi(TenantApi):
    permission_actions = {"GET": "shared.download"}

    @extend_schema(
        operation_id="shared_datasets_download",
        parameters=[FORMAT_PARAM],
        summary="Streamed download of the de-identified version (download grantees only; audited)",
        responses={(200, "application/vnd.apache.parquet"): OpenApiTypes.BINARY, **error_responses(409)},
        tags=["shared-datasets"],
    )
    def get(self, request: Request, tenant_slug: str, dataset_id: int) -> Any:
        ds, v = _shared_download_version(self, dataset_id)
        fmt = _format_param(request)
        _audit_shared_read(self, ds, v, {"mode": "download", "format": fmt})
        return _stream(v, fmt, selectors.version_key(consumer=self.tenant, version=v))
