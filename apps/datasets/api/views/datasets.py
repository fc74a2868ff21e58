"""Datasets: list, create, read, rename, delete."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.common.api import StrictSerializer, error_responses, paginated
from apps.common.idempotency import idempotent
from apps.common.pagination import CursorPagination
from apps.datasets import selectors, services
from apps.datasets.access import access_dataset
from apps.datasets.api.serializers import DatasetOutput
from apps.tenancy.api.base import TenantApi


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
