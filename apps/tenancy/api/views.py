"""Tenancy API: my tenants, tenant detail, members, invitations."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from apps.common.api import StrictSerializer, error_responses, paginated
from apps.common.errors import AccessDenied
from apps.common.idempotency import idempotent
from apps.common.pagination import CursorPagination
from apps.tenancy import services
from apps.tenancy.access import access_invitation, access_membership
from apps.tenancy.api.base import BaseApi, TenantApi
from apps.tenancy.models import Invitation, Membership, Role, Tenant
from apps.tenancy.selectors import invitation_list, membership_list, tenant_list_for_user


class TenantOutput(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["id", "slug", "name", "status", "created_at"]


class MyTenantOutput(TenantOutput):
    role = serializers.CharField()

    class Meta(TenantOutput.Meta):
        fields = [*TenantOutput.Meta.fields, "role"]


class TenantListApi(BaseApi):
    @extend_schema(
        operation_id="tenants_list",
        summary="Tenants I belong to (with my role)",
        responses={200: MyTenantOutput(many=True), **error_responses()},
        tags=["tenants"],
    )
    def get(self, request: Request) -> Response:
        user: Any = request.user  # a User or an ApiKeyPrincipal
        if getattr(user, "key_id", None) is not None:
            tenant = Tenant.objects.get(pk=user.tenant_id)
            tenant.role = "integrator"  # type: ignore[attr-defined]
            return Response(MyTenantOutput([tenant], many=True).data)
        from apps.tenancy.selectors import membership_for

        tenants = list(tenant_list_for_user(user=user))
        for t in tenants:
            m = membership_for(tenant_id=t.pk, user_id=user.pk)
            t.role = m.role if m else ""  # type: ignore[attr-defined]
        return Response(MyTenantOutput(tenants, many=True).data)


class TenantDetailApi(TenantApi):
    permission_actions = {"GET": "tenant.view", "PATCH": "tenant.update"}

    class Input(StrictSerializer):
        name = serializers.CharField(max_length=200, min_length=1)

    @extend_schema(
        operation_id="tenants_retrieve", responses={200: MyTenantOutput, **error_responses()}, tags=["tenants"]
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        self.tenant.role = self.role  # type: ignore[attr-defined]
        return Response(MyTenantOutput(self.tenant).data)

    @extend_schema(
        operation_id="tenants_update",
        request=Input,
        responses={200: MyTenantOutput, **error_responses(415)},
        tags=["tenants"],
    )
    def patch(self, request: Request, tenant_slug: str) -> Response:
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = services.tenant_update(tenant=self.tenant, name=data.validated_data["name"])
        tenant.role = self.role  # type: ignore[attr-defined]
        return Response(MyTenantOutput(tenant).data)


class MemberOutput(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email")
    full_name = serializers.CharField(source="user.full_name")
    user_id = serializers.IntegerField()

    class Meta:
        model = Membership
        fields = ["id", "user_id", "email", "full_name", "role", "created_at", "updated_at"]


class MemberListApi(TenantApi):
    pagination_class = CursorPagination  # documents the paginated envelope in the OpenAPI schema
    permission_actions = {"GET": "member.list", "POST": "member.add"}

    class Input(StrictSerializer):
        email = serializers.EmailField()
        role = serializers.ChoiceField(choices=Role.choices)

    @extend_schema(
        operation_id="members_list", responses={200: MemberOutput(many=True), **error_responses()}, tags=["members"]
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        return paginated(self, request, membership_list(tenant=self.tenant), MemberOutput)

    @extend_schema(
        operation_id="members_create",
        summary="Add an existing user as a member",
        request=Input,
        responses={201: MemberOutput, **error_responses(409, 415, 422)},
        tags=["members"],
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        def create() -> Response:
            data = self.Input(data=request.data)
            data.is_valid(raise_exception=True)
            user = get_user_model().objects.filter(email=data.validated_data["email"].lower(), is_active=True).first()
            if user is None:
                raise serializers.ValidationError(
                    {"email": ["No active user has this e-mail; send an invitation instead."]}
                )
            m = services.membership_add(
                tenant=self.tenant, actor_role=self.role, user=user, role=data.validated_data["role"]
            )
            return Response(MemberOutput(m).data, status=status.HTTP_201_CREATED)

        return idempotent(request, self.tenant.pk, create)


class MemberDetailApi(TenantApi):
    permission_actions = {"GET": "member.list", "PATCH": "member.change_role", "DELETE": "member.remove"}

    class Input(StrictSerializer):
        role = serializers.ChoiceField(choices=Role.choices)

    @extend_schema(
        operation_id="members_retrieve", responses={200: MemberOutput, **error_responses()}, tags=["members"]
    )
    def get(self, request: Request, tenant_slug: str, member_id: int) -> Response:
        return Response(MemberOutput(access_membership(tenant=self.tenant, membership_id=member_id)).data)

    @extend_schema(
        operation_id="members_update",
        summary="Change a member's role",
        request=Input,
        responses={200: MemberOutput, **error_responses(409, 415)},
        tags=["members"],
    )
    def patch(self, request: Request, tenant_slug: str, member_id: int) -> Response:
        m = access_membership(tenant=self.tenant, membership_id=member_id)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        m = services.membership_change_role(
            tenant=self.tenant, actor_role=self.role, membership=m, role=data.validated_data["role"]
        )
        return Response(MemberOutput(m).data)

    @extend_schema(
        operation_id="members_destroy",
        summary="Remove a member",
        responses={204: OpenApiResponse(description="Removed"), **error_responses(409)},
        tags=["members"],
    )
    def delete(self, request: Request, tenant_slug: str, member_id: int) -> Response:
        m = access_membership(tenant=self.tenant, membership_id=member_id)
        services.membership_remove(tenant=self.tenant, actor_role=self.role, membership=m)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationOutput(serializers.ModelSerializer):
    status = serializers.CharField()

    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "status", "created_at", "expires_at", "accepted_at", "revoked_at"]


class InvitationCreatedOutput(InvitationOutput):
    token = serializers.CharField(help_text="Shown once. Send it to the invitee.")

    class Meta(InvitationOutput.Meta):
        fields = [*InvitationOutput.Meta.fields, "token"]


class InvitationListApi(TenantApi):
    pagination_class = CursorPagination  # documents the paginated envelope in the OpenAPI schema
    permission_actions = {"GET": "invitation.list", "POST": "invitation.create"}

    class Input(StrictSerializer):
        email = serializers.EmailField()
        role = serializers.ChoiceField(choices=Role.choices)
        ttl_days = serializers.IntegerField(min_value=1, max_value=30, default=7)

    @extend_schema(
        operation_id="invitations_list",
        responses={200: InvitationOutput(many=True), **error_responses()},
        tags=["members"],
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        return paginated(self, request, invitation_list(tenant=self.tenant), InvitationOutput)

    @extend_schema(
        operation_id="invitations_create",
        request=Input,
        responses={201: InvitationCreatedOutput, **error_responses(415, 422)},
        tags=["members"],
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        def create() -> Response:
            data = self.Input(data=request.data)
            data.is_valid(raise_exception=True)
            inv, token = services.invitation_create(
                tenant=self.tenant, actor_role=self.role, invited_by=request.user, **data.validated_data
            )
            inv.token = token  # type: ignore[attr-defined]
            return Response(InvitationCreatedOutput(inv).data, status=status.HTTP_201_CREATED)

        return idempotent(request, self.tenant.pk, create)


class InvitationDetailApi(TenantApi):
    permission_actions = {"GET": "invitation.list", "DELETE": "invitation.revoke"}

    @extend_schema(
        operation_id="invitations_retrieve", responses={200: InvitationOutput, **error_responses()}, tags=["members"]
    )
    def get(self, request: Request, tenant_slug: str, invitation_id: int) -> Response:
        return Response(InvitationOutput(access_invitation(tenant=self.tenant, invitation_id=invitation_id)).data)

    @extend_schema(
        operation_id="invitations_destroy",
        summary="Revoke a pending invitation",
        responses={200: InvitationOutput, **error_responses(409)},
        tags=["members"],
    )
    def delete(self, request: Request, tenant_slug: str, invitation_id: int) -> Response:
        inv = access_invitation(tenant=self.tenant, invitation_id=invitation_id)
        return Response(InvitationOutput(services.invitation_revoke(tenant=self.tenant, invitation=inv)).data)


class InvitationAcceptApi(BaseApi):
    class Input(StrictSerializer):
        token = serializers.CharField(max_length=200)

    @extend_schema(
        operation_id="invitations_accept",
        request=Input,
        responses={
            201: inline_serializer(
                "AcceptedMembership", {"tenant": serializers.CharField(), "role": serializers.CharField()}
            ),
            **error_responses(409, 415),
        },
        tags=["members"],
    )
    def post(self, request: Request) -> Response:
        if getattr(request.user, "key_id", None) is not None:
            raise AccessDenied(reason="api_key_cannot_accept", action="invitation.accept")
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        m = services.invitation_accept(user=request.user, token=data.validated_data["token"])
        slug = Tenant.objects.get(pk=m.tenant_id).slug
        return Response({"tenant": slug, "role": m.role}, status=status.HTTP_201_CREATED)
