"""Auth (CSRF, login, logout, me) and API key endpoints."""

from __future__ import annotations

from typing import Any

from django.middleware.csrf import get_token
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts import services
from apps.accounts.access import access_api_key
from apps.accounts.authentication import CsrfSessionAuthentication
from apps.accounts.models import ApiKey
from apps.accounts.selectors import api_key_list
from apps.common.api import StrictSerializer, error_responses, paginated
from apps.common.errors import Forbidden
from apps.common.idempotency import idempotent
from apps.common.pagination import CursorPagination
from apps.tenancy.api.base import BaseApi, TenantApi
from apps.tenancy.models import Role


class UserOutput(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    full_name = serializers.CharField()
    is_staff = serializers.BooleanField()


class CsrfApi(BaseApi):
    permission_classes = [AllowAny]
    authentication_classes: list[type] = []

    @extend_schema(
        operation_id="auth_csrf",
        summary="Get a CSRF token (also set as the csrftoken cookie)",
        responses={200: inline_serializer("CsrfToken", {"csrf_token": serializers.CharField()})},
        tags=["auth"],
        auth=[],
    )
    def get(self, request: Request) -> Response:
        return Response({"csrf_token": get_token(request._request)})


class LoginApi(BaseApi):
    permission_classes = [AllowAny]

    class Input(StrictSerializer):
        email = serializers.EmailField(max_length=254)
        password = serializers.CharField(max_length=1024, trim_whitespace=False)

    @extend_schema(
        operation_id="auth_login",
        summary="Sign in with e-mail and password (session cookie)",
        request=Input,
        responses={200: UserOutput, **error_responses(415)},
        tags=["auth"],
        auth=[],
    )
    def post(self, request: Request) -> Response:
        # Login CSRF: an anonymous POST is not CSRF-checked by DRF, so check it here.
        CsrfSessionAuthentication().enforce_csrf(request)
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.login_attempt(request=request._request, **data.validated_data)
        return Response(UserOutput(user).data)


class LogoutApi(BaseApi):
    @extend_schema(
        operation_id="auth_logout",
        request=None,
        responses={204: OpenApiResponse(description="Signed out"), **error_responses()},
        tags=["auth"],
    )
    def post(self, request: Request) -> Response:
        if request.data:
            raise ValidationError({"non_field_errors": ["This endpoint takes no body."]})
        if getattr(request.user, "key_id", None) is not None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        services.logout_user(request=request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeApi(BaseApi):
    @extend_schema(operation_id="auth_me", responses={200: UserOutput, **error_responses()}, tags=["auth"])
    def get(self, request: Request) -> Response:
        user: Any = request.user  # a User or an ApiKeyPrincipal
        if getattr(user, "key_id", None) is not None:
            return Response({"id": 0, "email": "", "full_name": user.name, "is_staff": False})
        return Response(UserOutput(user).data)


class ApiKeyOutput(serializers.ModelSerializer):
    status = serializers.CharField()
    created_by = serializers.EmailField(source="created_by.email", allow_null=True, default=None)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "scopes",
            "status",
            "created_by",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ]


class ApiKeyCreatedOutput(ApiKeyOutput):
    key = serializers.CharField(help_text="The full key. Shown once; store it now.")

    class Meta(ApiKeyOutput.Meta):
        fields = [*ApiKeyOutput.Meta.fields, "key"]


class ApiKeyListApi(TenantApi):
    pagination_class = CursorPagination  # documents the paginated envelope in the OpenAPI schema
    permission_actions = {"GET": "apikey.list", "POST": "apikey.create"}

    class Input(StrictSerializer):
        name = serializers.CharField(max_length=100, min_length=1)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=ApiKey.Scope.choices), min_length=1, max_length=2
        )
        expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    @extend_schema(
        operation_id="api_keys_list", responses={200: ApiKeyOutput(many=True), **error_responses()}, tags=["api-keys"]
    )
    def get(self, request: Request, tenant_slug: str) -> Response:
        return paginated(self, request, api_key_list(tenant=self.tenant), ApiKeyOutput)

    @extend_schema(
        operation_id="api_keys_create",
        request=Input,
        responses={201: ApiKeyCreatedOutput, **error_responses(415, 422)},
        tags=["api-keys"],
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        def create() -> Response:
            data = self.Input(data=request.data)
            data.is_valid(raise_exception=True)
            created = services.api_key_create(
                tenant=self.tenant,
                created_by=request.user,  # type: ignore[arg-type]
                **data.validated_data,
            )
            created.key.key = created.secret  # type: ignore[attr-defined]
            return Response(ApiKeyCreatedOutput(created.key).data, status=status.HTTP_201_CREATED)

        return idempotent(request, self.tenant.pk, create)


class ApiKeyDetailApi(TenantApi):
    permission_actions = {"GET": "apikey.list", "DELETE": "apikey.revoke"}

    @extend_schema(
        operation_id="api_keys_retrieve", responses={200: ApiKeyOutput, **error_responses()}, tags=["api-keys"]
    )
    def get(self, request: Request, tenant_slug: str, key_id: int) -> Response:
        return Response(ApiKeyOutput(access_api_key(tenant=self.tenant, key_id=key_id)).data)

    @extend_schema(
        operation_id="api_keys_revoke",
        summary="Revoke a key (takes effect at once)",
        responses={200: ApiKeyOutput, **error_responses(409)},
        tags=["api-keys"],
    )
    def delete(self, request: Request, tenant_slug: str, key_id: int) -> Response:
        key = access_api_key(tenant=self.tenant, key_id=key_id)
        if self.role == Role.INTEGRATOR and key.created_by_id != request.user.pk:
            raise Forbidden(
                "Integrators may revoke only their own keys.",
                reason="not_own_key",
                tenant_id=self.tenant.pk,
                action="apikey.revoke",
            )
        return Response(ApiKeyOutput(services.api_key_revoke(tenant=self.tenant, key=key)).data)
