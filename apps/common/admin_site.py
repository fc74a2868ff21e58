"""The compliance console: an OTP-only admin site whose every view runs in platform (RLS) scope."""

from __future__ import annotations

from collections.abc import Callable
from functools import update_wrapper
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.forms import AdminAuthenticationForm
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import SimpleTemplateResponse, TemplateResponse
from django.urls import URLPattern, URLResolver, path
from django_otp import devices_for_user
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite

from apps.common.context import Actor, set_actor
from apps.tenancy.scope import platform_scope


def staff_actor(request: HttpRequest) -> Actor:
    """The audit actor for a console request: the signed-in staff user."""
    user = request.user
    return Actor(type="user", id=str(user.pk), label=getattr(user, "email", None))


class CohortAdminLoginForm(OTPAdminAuthenticationForm):
    """Password + TOTP in one step, with the same Redis lockout as the API login; refusals are audited."""

    def _chosen_device(self, user: Any) -> Any:
        device = super()._chosen_device(user)
        if device is None and not self.cleaned_data.get("otp_device"):
            # One confirmed device: use it, so staff need not pick it in a second round trip.
            devices = list(devices_for_user(user, confirmed=True, for_verify=True))
            if len(devices) == 1:
                device = devices[0]
        return device

    def clean(self) -> dict[str, Any]:
        from apps.accounts.services import LoginLocked, login_rate_check, login_rate_success
        from apps.audit.services import audit_record

        email = str(self.cleaned_data.get("username") or "").strip().lower()
        try:
            login_rate_check(email=email, path="admin")
        except LoginLocked as exc:
            raise forms.ValidationError(
                "Too many failed sign-in attempts. Try again later.", code="login_locked"
            ) from exc
        try:
            cleaned = super().clean()
        except forms.ValidationError as exc:
            user = self.user_cache
            if user is not None:  # the password was right: refused for staff status or the second factor
                reason = "not_staff" if not user.is_staff else f"otp_{getattr(exc, 'code', None) or 'invalid'}"
                audit_record(
                    action="auth.admin_login_denied",
                    outcome="denied",
                    target=user,
                    actor=Actor(type="user", id=str(user.pk), label=user.email),
                    details={"reason": reason},
                )
            raise
        login_rate_success(email=email)
        return cleaned


class CohortAdminSite(OTPAdminSite):
    """Django admin for platform compliance staff: TOTP required, platform RLS scope, read-mostly."""

    site_header = "Cohort compliance console"
    site_title = "Cohort compliance console"
    index_title = "Compliance"
    index_template = "admin/cohort/index.html"
    enable_nav_sidebar = True

    @property  # type: ignore[override]
    def login_form(self) -> type[AdminAuthenticationForm]:
        return CohortAdminLoginForm if settings.COHORT_REQUIRE_ADMIN_OTP else AdminAuthenticationForm

    @property  # type: ignore[override]
    def login_template(self) -> str:
        return "otp/admin111/login.html" if settings.COHORT_REQUIRE_ADMIN_OTP else "admin/login.html"

    def has_permission(self, request: HttpRequest) -> bool:
        user = request.user
        if not (user.is_active and user.is_staff):
            return False
        if settings.COHORT_REQUIRE_ADMIN_OTP:
            is_verified = getattr(user, "is_verified", None)
            return bool(is_verified and is_verified())
        return True

    def admin_view(self, view: Callable[..., HttpResponse], cacheable: bool = False) -> Callable[..., HttpResponse]:
        """Every console view (after the permission check) runs in platform scope with the staff
        user as the audit actor; template responses are rendered inside that scope, because the
        RLS settings are transaction-local and lazy querysets are evaluated while rendering."""

        def scoped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            with platform_scope():
                set_actor(staff_actor(request))
                response = view(request, *args, **kwargs)
                if isinstance(response, SimpleTemplateResponse) and not response.is_rendered:
                    response.render()
            return response

        update_wrapper(scoped, view)
        return super().admin_view(scoped, cacheable)

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        """The console's front page, with the banner of the latest audit chain verification."""
        from apps.audit.status import latest_status

        return super().index(request, {**(extra_context or {}), "audit_chain": latest_status()})

    def get_urls(self) -> list[URLPattern | URLResolver]:
        urls: list[URLPattern | URLResolver] = [
            path("break-glass/", self.admin_view(self.breakglass_open_view), name="breakglass"),
            path(
                "break-glass/<int:tenant_id>/", self.admin_view(self.breakglass_tenant_view), name="breakglass_tenant"
            ),
        ]
        return urls + super().get_urls()

    def breakglass_open_view(self, request: HttpRequest) -> HttpResponse:
        from apps.audit.breakglass import open_view

        return open_view(request, site=self)

    def breakglass_tenant_view(self, request: HttpRequest, tenant_id: int) -> HttpResponse:
        from apps.audit.breakglass import tenant_view

        return tenant_view(request, tenant_id=tenant_id, site=self)


cohort_admin_site = CohortAdminSite(name="admin")
cohort_admin_site.disable_action("delete_selected")


class ConsoleModelAdmin(admin.ModelAdmin):
    """Base of every console ModelAdmin: any (OTP-verified) staff member may view; nothing is
    added, edited or deleted through Django's generic forms — changes go through services."""

    show_full_result_count = False

    def _is_staff(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._is_staff(request)

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self._is_staff(request)

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class ReadOnlyConsoleAdmin(ConsoleModelAdmin):
    """Every model field shown read-only, except ``hidden`` ones (storage paths, key material)."""

    hidden: tuple[str, ...] = ()

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> Any:
        return [f.name for f in self.model._meta.fields if f.name not in self.hidden]

    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> Any:
        return self.get_fields(request, obj)


def action_form_response(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
    *,
    form: forms.Form,
    action: str,
    title: str,
    intro: str,
    submit_label: str,
) -> TemplateResponse:
    """The intermediate page of an action that needs input (a reason, a role) or a confirmation."""
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "intro": intro,
        "submit_label": submit_label,
        "objects": list(queryset[:100]),
        "selected_pks": [str(pk) for pk in queryset.values_list("pk", flat=True)],
        "form": form,
        "action": action,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "opts": opts,
        "app_label": opts.app_label,
        "media": modeladmin.media,
    }
    return TemplateResponse(request, "admin/cohort/action_form.html", context)
