"""Compliance console: data key metadata (status, KEK, dates). Never key material."""

from __future__ import annotations

from django.contrib import admin

from apps.common.admin_site import ReadOnlyConsoleAdmin, cohort_admin_site
from apps.vault.models import DataKey


@admin.register(DataKey, site=cohort_admin_site)
class DataKeyAdmin(ReadOnlyConsoleAdmin):
    list_display = ("id", "tenant", "purpose", "status", "kek_id", "created_at", "retired_at", "destroyed_at")
    list_filter = ("purpose", "status", "tenant")
    list_select_related = ("tenant",)
    ordering = ("-id",)

    hidden = ("wrapped",)
