"""Benchmark URLs: the real API (config.urls) plus baseline endpoints under /bench/ (bench.settings only)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import include, path
from rest_framework.generics import ListAPIView
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from apps.common.pagination import CursorPagination
from apps.tenancy.access import access_membership
from apps.tenancy.api.views import MemberDetailApi, MemberOutput
from apps.tenancy.models import Membership
from apps.tenancy.scope import set_db_context
from bench.workloads import membership_change_role_unaudited
from config import urls as config_urls  # registers the <pk:> converter used below


class BareMemberListApi(ListAPIView):
    """The same model, serializer and pagination as ``GET /tenants/<slug>/members/``, with no
    authentication, no tenant/membership/role checks and no throttle. The tenant id comes from the
    query string and is put in the RLS setting directly (the app role sees nothing without it)."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_classes: list[type] = []
    serializer_class = MemberOutput
    pagination_class = CursorPagination

    def get_queryset(self) -> QuerySet[Membership]:
        tenant_id = int(self.request.query_params["tenant_id"])
        set_db_context(tenant_id=tenant_id)
        return Membership.all_tenants.filter(tenant_id=tenant_id).select_related("user")


class UnauditedMemberDetailApi(MemberDetailApi):
    """``PATCH /tenants/<slug>/members/<id>/`` exactly as the real view (authentication, tenant
    checks, role policy, throttle, input validation), except that the change is not audited."""

    def patch(self, request: Request, tenant_slug: str, member_id: int) -> Response:  # type: ignore[override]
        m = access_membership(tenant=self.tenant, membership_id=member_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        m = membership_change_role_unaudited(tenant=self.tenant, membership=m, role=data.validated_data["role"])
        return Response(MemberOutput(m).data)


def _bench_patterns() -> list[Any]:
    return [
        path("bare/members/", BareMemberListApi.as_view(), name="bench-bare-members"),
        path(
            "unaudited/tenants/<slug:tenant_slug>/members/<pk:member_id>/",
            UnauditedMemberDetailApi.as_view(),
            name="bench-unaudited-member",
        ),
    ]


urlpatterns = [
    path("bench/", include(_bench_patterns())),
    path("", include(config_urls)),
]

handler400 = "apps.common.errors.bad_request_view"
handler404 = "apps.common.errors.not_found_view"
handler500 = "apps.common.errors.server_error_view"
