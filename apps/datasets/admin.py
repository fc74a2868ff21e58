"""Compliance console pages for datasets, versions, grants and budgets: read-only metadata
(schemas, reports, hashes, sizes). Row contents are never shown here: they are encrypted objects,
readable only through the audited API by the owner tenant (or a download grantee)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from apps.common.admin_site import ReadOnlyConsoleAdmin as ReadOnlyAdmin
from apps.common.admin_site import cohort_admin_site
from apps.datasets.models import BudgetReservation, Dataset, DatasetGrant, DatasetVersion, PrivacyBudget


@admin.register(Dataset, site=cohort_admin_site)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "tenant", "status", "created_at", "deleted_at", "purge_after")
    list_filter = ("status", "tenant")
    search_fields = ("name", "tenant__slug")
    list_select_related = ("tenant",)
    ordering = ("-id",)


@admin.register(DatasetVersion, site=cohort_admin_site)
class DatasetVersionAdmin(ReadOnlyAdmin):
    list_display = ("id", "dataset", "tenant", "number", "kind", "status", "rows", "size_bytes", "created_at")
    list_filter = ("kind", "status", "tenant")
    search_fields = ("dataset__name", "content_sha256", "upload_sha256")
    list_select_related = ("dataset", "tenant")
    ordering = ("-id",)
    hidden = ("storage_name",)


@admin.register(DatasetGrant, site=cohort_admin_site)
class DatasetGrantAdmin(ReadOnlyAdmin):
    list_display = ("id", "dataset", "tenant", "grantee", "permission", "status", "expires_at", "revoked_at")
    list_filter = ("permission", "tenant", "grantee")
    search_fields = ("dataset__name", "tenant__slug", "grantee__slug")
    list_select_related = ("dataset", "tenant", "grantee")
    ordering = ("-id",)


class ReservationInline(admin.TabularInline):
    model = BudgetReservation
    fk_name = "budget"
    extra = 0
    can_delete = False
    fields = ("consumer", "state", "epsilon", "delta", "epsilon_spent", "delta_spent", "purpose", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(PrivacyBudget, site=cohort_admin_site)
class PrivacyBudgetAdmin(ReadOnlyAdmin):
    list_display = ("id", "dataset", "tenant", "epsilon_total", "delta_total", "updated_at")
    list_select_related = ("dataset", "tenant")
    search_fields = ("dataset__name", "tenant__slug")
    ordering = ("-id",)
    inlines = [ReservationInline]
