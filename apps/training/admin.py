"""Compliance console: training jobs and model versions (read-only metadata; never weights)."""

from __future__ import annotations

from django.contrib import admin

from apps.common.admin_site import ReadOnlyConsoleAdmin as _ReadOnly
from apps.common.admin_site import cohort_admin_site
from apps.training.models import ModelVersion, ResourceUsage, TrainingJob, TrainingQuota


@admin.register(TrainingJob, site=cohort_admin_site)
class TrainingJobAdmin(_ReadOnly):
    list_display = (
        "id", "name", "tenant", "status", "queue", "priority", "attempts", "admitted_at", "wait_reason", "finished_at",
    )  # fmt: skip
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


@admin.register(TrainingQuota, site=cohort_admin_site)
class TrainingQuotaAdmin(_ReadOnly):
    """Changed with ``manage.py training_quota`` (audited), shown here."""

    list_display = (
        "tenant", "max_concurrent_jobs", "max_cpu_jobs", "gpu_hours_per_month", "max_site_tasks", "updated_at"
    )  # fmt: skip
    list_select_related = ("tenant",)
    ordering = ("tenant__slug",)


@admin.register(ResourceUsage, site=cohort_admin_site)
class ResourceUsageAdmin(_ReadOnly):
    list_display = ("tenant", "month", "resource", "seconds")
    list_filter = ("resource", "month", "tenant")
    list_select_related = ("tenant",)
    ordering = ("-month", "tenant__slug")
