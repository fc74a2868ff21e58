"""Console admin for tenants (suspend/reactivate) and memberships (change role/remove), all via services."""

from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from apps.common.admin_site import (
    ConsoleModelAdmin,
    action_form_response,
    cohort_admin_site,
    staff_actor,
)
from apps.common.exceptions import DomainError
from apps.tenancy.models import Membership, Role, Tenant
from apps.tenancy.scope import tenant_scope
from apps.tenancy.services import membership_change_role, membership_remove, tenant_set_status


class ReasonForm(forms.Form):
    reason = forms.CharField(
        min_length=10,
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Recorded in each tenant's audit log (at least 10 characters).",
    )


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class ConfirmForm(forms.Form):
    pass


def _submitted(request: HttpRequest) -> bool:
    return request.method == "POST" and "apply" in request.POST


@admin.register(Tenant, site=cohort_admin_site)
class TenantAdmin(ConsoleModelAdmin):
    list_display = ("slug", "name", "status", "suspended_reason", "created_at", "updated_at")
    list_filter = ("status",)
    search_fields = ("slug", "name")
    ordering = ("slug",)
    fields = ("slug", "name", "status", "suspended_reason", "created_at", "updated_at")
    readonly_fields = fields
    actions = ("suspend_tenants", "reactivate_tenants")

    def _set_status(
        self, request: HttpRequest, queryset: QuerySet[Tenant], status: str, action: str, verb: str
    ) -> HttpResponse | None:
        form = ReasonForm(request.POST if _submitted(request) else None)
        if not form.is_valid():
            return action_form_response(
                self,
                request,
                queryset,
                form=form,
                action=action,
                title=f"{verb} tenants",
                intro=f"{verb} these tenants. Each change is recorded in the tenant's audit log.",
                submit_label=verb,
            )
        changed, skipped = 0, 0
        for tenant in list(queryset):
            if tenant.status == status:
                skipped += 1
                continue
            tenant_set_status(
                tenant=tenant, status=status, reason=form.cleaned_data["reason"], actor=staff_actor(request)
            )
            changed += 1
        self.message_user(
            request, f"{verb}: {changed} tenant(s) changed, {skipped} already {status}.", messages.SUCCESS
        )
        return None

    @admin.action(description="Suspend selected tenants (with a reason)")
    def suspend_tenants(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> HttpResponse | None:
        return self._set_status(request, queryset, Tenant.Status.SUSPENDED, "suspend_tenants", "Suspend")

    @admin.action(description="Reactivate selected tenants (with a reason)")
    def reactivate_tenants(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> HttpResponse | None:
        return self._set_status(request, queryset, Tenant.Status.ACTIVE, "reactivate_tenants", "Reactivate")


@admin.register(Membership, site=cohort_admin_site)
class MembershipAdmin(ConsoleModelAdmin):
    """Memberships across tenants (platform scope). Changes use the membership services with owner
    semantics; the event's actor is the staff user (the console request's actor)."""

    list_display = ("id", "tenant", "user", "role", "created_at", "updated_at")
    list_filter = ("role", "tenant")
    search_fields = ("user__email", "tenant__slug")
    list_select_related = ("tenant", "user")
    ordering = ("tenant__slug", "id")
    fields = ("tenant", "user", "role", "created_at", "updated_at")
    readonly_fields = fields
    actions = ("change_role", "remove_memberships")

    def _each(
        self, request: HttpRequest, queryset: QuerySet[Membership], apply: Callable[[Membership], bool]
    ) -> tuple[int, list[str]]:
        done, errors = 0, []
        for m in list(queryset.select_related("tenant", "user")):
            try:
                with tenant_scope(m.tenant_id):
                    done += int(apply(m))
            except DomainError as exc:
                errors.append(f"{m.user} in {m.tenant}: {exc.message}")
        return done, errors

    def _report(self, request: HttpRequest, verb: str, done: int, errors: list[str]) -> None:
        self.message_user(request, f"{verb}: {done} membership(s).", messages.SUCCESS)
        for error in errors[:20]:
            self.message_user(request, error, messages.ERROR)

    @admin.action(description="Change role of selected memberships")
    def change_role(self, request: HttpRequest, queryset: QuerySet[Membership]) -> HttpResponse | None:
        form = RoleForm(request.POST if _submitted(request) else None)
        if not form.is_valid():
            return action_form_response(
                self,
                request,
                queryset,
                form=form,
                action="change_role",
                title="Change role",
                intro="Give these members a new role. Each change is recorded in the tenant's audit log.",
                submit_label="Change role",
            )
        role = form.cleaned_data["role"]

        def apply(m: Membership) -> bool:
            if m.role == role:
                return False
            membership_change_role(tenant=m.tenant, actor_role=Role.OWNER, membership=m, role=role)
            return True

        done, errors = self._each(request, queryset, apply)
        self._report(request, f"Role changed to {role}", done, errors)
        return None

    @admin.action(description="Remove selected memberships")
    def remove_memberships(self, request: HttpRequest, queryset: QuerySet[Membership]) -> HttpResponse | None:
        form = ConfirmForm(request.POST if _submitted(request) else None)
        if not form.is_valid():
            return action_form_response(
                self,
                request,
                queryset,
                form=form,
                action="remove_memberships",
                title="Remove memberships",
                intro="Remove these members from their tenants. Each removal is recorded in the tenant's audit log.",
                submit_label="Remove",
            )

        def apply(m: Membership) -> bool:
            membership_remove(tenant=m.tenant, actor_role=Role.OWNER, membership=m)
            return True

        done, errors = self._each(request, queryset, apply)
        self._report(request, "Removed", done, errors)
        return None
