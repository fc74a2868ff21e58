"""Privacy budget: the owner's (epsilon, delta) and the reservation ledger."""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from apps.common.api import StrictSerializer, error_responses, paginated
from apps.common.exceptions import NotFound
from apps.common.idempotency import idempotent
from apps.common.pagination import CursorPagination
from apps.datasets import selectors, services
from apps.datasets.access import access_dataset, access_reservation
from apps.datasets.api.serializers import BudgetOutput, ReservationOutput, budget_data
from apps.datasets.models import Dataset, PrivacyBudget
from apps.tenancy.api.base import TenantApi


def _budget_dataset(view: TenantApi, dataset_id: int) -> tuple[Dataset, PrivacyBudget]:
    """The owner's dataset, or one granted to this tenant with ``process`` or ``federate`` (grantees see the budget
    and their own reservations; only the owner reserves through the API)."""
    ds = selectors.own_active_dataset(dataset_id=dataset_id)
    if ds is None:
        shared, perms = selectors.shared_dataset_get(tenant=view.tenant, dataset_id=dataset_id)
        if not set(perms) & {"process", "federate"}:
            raise NotFound(
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
