"""Datasets other tenants shared with this one: list, detail, preview, download."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from apps.common.api import error_responses
from apps.common.errors import Conflict
from apps.common.pagination import CursorPagination
from apps.datasets import selectors, services
from apps.datasets.api.serializers import FORMAT_PARAM, ROWS_PARAM, PreviewOutput, SharedDatasetOutput, shared_data
from apps.datasets.api.streaming import format_param, preview, rows_param, stream_version
from apps.datasets.models import Dataset, DatasetVersion
from apps.tenancy.api.base import TenantApi


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
            perms = selectors.grantee_permissions(grantee=self.tenant, dataset_id=ds.pk)
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
    services.shared_read_recorded(grantee=view.tenant, dataset=ds, version=v, details=details)


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
        rows = rows_param(request)
        _audit_shared_read(self, ds, v, {"mode": "preview", "rows": rows})
        return Response(preview(v, rows, selectors.version_key(consumer=self.tenant, version=v)))


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
        fmt = format_param(request)
        _audit_shared_read(self, ds, v, {"mode": "download", "format": fmt})
        return stream_version(v, fmt, selectors.version_key(consumer=self.tenant, version=v))
