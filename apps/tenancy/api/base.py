"""API base classes. ``TenantApi`` is the base of every tenant route: it resolves the tenant from
the URL, checks membership (or the API key's tenant), the role/scope for ``permission_action``,
puts the tenant in scope (app + RLS) for the request, and takes it out afterwards."""

from __future__ import annotations

from typing import Any, ClassVar

from django.http.response import HttpResponseBase
from rest_framework.exceptions import MethodNotAllowed
from rest_framework.request import Request
from rest_framework.views import APIView

from apps.common.errors import AccessDenied, Forbidden
from apps.common.parsers import JSONParser
from apps.tenancy import policy
from apps.tenancy.models import Membership, Tenant
from apps.tenancy.scope import activate_tenant, deactivate_tenant
from apps.tenancy.selectors import tenant_resolve


class BaseApi(APIView):
    """Non-tenant endpoints (auth, my tenants)."""

    permission_action: ClassVar[str | None] = None  # type: ignore[misc]
    parser_classes: ClassVar[list[type]] = [JSONParser]  # type: ignore[misc]


class TenantApi(BaseApi):
    """Base of every ``/api/v1/tenants/<tenant_slug>/…`` view."""

    permission_action: ClassVar[str | None] = None
    # Per-method actions, e.g. {"GET": "member.list", "POST": "member.add"}
    permission_actions: ClassVar[dict[str, str]] = {}

    tenant: Tenant
    membership: Membership | None
    role: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("get_queryset", "get_object"):
            if name in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} overrides {name}: tenant APIs fetch objects only through "
                    "access_<entity>() helpers and selectors, which are tenant-scoped"
                )

    def action_for(self, request: Request) -> str:
        method = "GET" if request.method == "HEAD" else (request.method or "").upper()
        if method.lower() not in self.http_method_names or not hasattr(self, method.lower()):
            raise MethodNotAllowed(request.method or "")  # an unimplemented method is a 405, never a 500
        if method == "OPTIONS":  # metadata: needs what reading the resource needs
            action = (
                self.permission_actions.get("GET")
                or self.permission_action
                or next(iter(self.permission_actions.values()), None)
            )
        else:
            action = self.permission_actions.get(method) or self.permission_action
        if not action:
            raise AssertionError(f"{type(self).__name__} declares no permission action for {request.method}")
        return action

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # authentication, IsAuthenticated, throttles
        slug = kwargs.get("tenant_slug", "")
        principal: Any = request.user  # a User or an ApiKeyPrincipal
        is_key = getattr(principal, "key_id", None) is not None
        tenant, membership = tenant_resolve(slug=slug, user_id=None if is_key else principal.pk)
        request.cohort_url_tenant_id = tenant.pk if tenant else None  # type: ignore[attr-defined]
        action = self.action_for(request)
        self.permission_action_used = action
        if tenant is None:
            raise AccessDenied(reason="unknown_tenant", action=action, target_type="tenancy.tenant", target_id=slug)
        if is_key:
            if principal.tenant_id != tenant.pk:
                raise AccessDenied(reason="api_key_other_tenant", tenant_id=tenant.pk, action=action)
            self.membership, self.role = None, policy.API_KEY_ROLE
            if not policy.api_key_allows(principal.scopes, action):
                raise Forbidden(
                    "This API key may not do that.", reason="api_key_scope", tenant_id=tenant.pk, action=action
                )
            user_id = None
        else:
            if membership is None:
                raise AccessDenied(reason="not_a_member", tenant_id=tenant.pk, action=action)
            if not principal.is_active:
                raise AccessDenied(reason="inactive_user", tenant_id=tenant.pk, action=action)
            self.membership, self.role = membership, membership.role
            user_id = principal.pk
        if not tenant.is_active:
            raise Forbidden(
                "This tenant is suspended.",
                reason="tenant_suspended",
                tenant_id=tenant.pk,
                action=action,
                code="tenant_suspended",
            )
        if self.membership is not None and not policy.role_allows(self.role, action):
            raise Forbidden("Your role does not allow this.", reason="role", tenant_id=tenant.pk, action=action)
        self.tenant = tenant
        self._scope_token = activate_tenant(tenant.pk, user_id=user_id)

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> HttpResponseBase:
        self._scope_token = None
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            if self._scope_token is not None:
                # ATOMIC_REQUESTS: the request's transaction commits next, ending the DB settings.
                deactivate_tenant(self._scope_token, transaction_ends=True)
                self._scope_token = None
