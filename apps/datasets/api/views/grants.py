"""Grants: share a dataset with another tenant, list, revoke."""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.common.api import StrictSerializer, error_responses, paginated
from apps.common.idempotency import idempotent
from apps.common.pagination import CursorPagination
from apps.datasets import selectors, services
from apps.datasets.access import access_dataset, access_grant
from apps.datasets.api.serializers import GrantOutput
from apps.datasets.models import DatasetGrant
from apps.tenancy.api.base import TenantApi


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
            grantee = selectors.active_tenant(slug=data.validated_data["grantee"])
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
