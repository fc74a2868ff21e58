"""Response shapes of the datasets API (output serializers and the dicts they render)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers

from apps.datasets import selectors, services
from apps.datasets.models import BudgetReservation, Dataset, DatasetGrant, DatasetVersion, PrivacyBudget

PREVIEW_MAX_ROWS = 100


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
        v = selectors.latest_version(dataset=obj)
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
