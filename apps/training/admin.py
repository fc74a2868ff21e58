"""Compliance console: training jobs and model versions (read-only metadata; never weights)."""

from __future__ import annotations

from django.contrib import admin

from apps.common.admin_site import ReadOnlyConsoleAdmin as _ReadOnly
from apps.common.admin_site import cohort_admin_site
from apps.training.models import ModelVersion, TrainingJob


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
