"""Compliance console: training jobs and model versions (read-only metadata; never weights)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from apps.common.admin_site import ConsoleModelAdmin, cohort_admin_site
from apps.training.models import ModelVersion, TrainingJob


class _ReadOnly(ConsoleModelAdmin):
    hidden: tuple[str, ...] = ()

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [f.name for f in self.model._meta.fields if f.name not in self.hidden]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.get_fields(request, obj)


@admin.register(TrainingJob, site=cohort_admin_site)
class TrainingJobAdmin(_ReadOnly):
    list_display = ("id", "name", "tenant", "status", "queue", "attempts", "created_at", "finished_at")
    list_filter = ("status", "queue", "tenant")
    search_fields = ("name", "tenant__slug")
    list_select_related = ("tenant",)
    ordering = ("-id",)
    hidden = ("lease_owner",)


@admin.register(ModelVersion, site=cohort_admin_site)
class ModelVersionAdmin(_ReadOnly):
    list_display = ("id", "name", "version", "tenant", "job", "size_bytes", "created_at")
    list_filter = ("tenant",)
    search_fields = ("name", "sha256", "tenant__slug")
    list_select_related = ("tenant",)
    ordering = ("-id",)
    hidden = ("storage_name",)
