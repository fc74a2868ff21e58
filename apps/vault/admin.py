"""Compliance console: data key metadata (status, KEK, dates). Never key material."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from apps.common.admin_site import ConsoleModelAdmin, cohort_admin_site
from apps.vault.models import DataKey


@admin.register(DataKey, site=cohort_admin_site)
class DataKeyAdmin(ConsoleModelAdmin):
    list_display = ("id", "tenant", "purpose", "status", "kek_id", "created_at", "retired_at", "destroyed_at")
    list_filter = ("purpose", "status", "tenant")
    list_select_related = ("tenant",)
    ordering = ("-id",)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [f.name for f in self.model._meta.fields if f.name != "wrapped"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.get_fields(request, obj)
