"""Compliance console: federations, their sites (approvals), rounds and slots. Read-only
metadata: never the seed secret, statistics, models or updates."""

from __future__ import annotations

from django.contrib import admin

from apps.common.admin_site import ReadOnlyConsoleAdmin as _ReadOnly
from apps.common.admin_site import cohort_admin_site
from apps.federation.models import Federation, FederationSite, Round, SiteRound


@admin.register(Federation, site=cohort_admin_site)
class FederationAdmin(_ReadOnly):
    list_display = ("id", "name", "tenant", "status", "current_round", "min_sites", "started_at", "finished_at")
    list_filter = ("status", "tenant")
    search_fields = ("name", "spec_hash", "tenant__slug")
    list_select_related = ("tenant",)
    ordering = ("-id",)
    hidden = ("seed_secret", "encoders")


@admin.register(FederationSite, site=cohort_admin_site)
class FederationSiteAdmin(_ReadOnly):
    list_display = ("id", "federation", "label", "tenant", "coordinator", "role", "approval", "approval_expires_at",
                    "share_metrics", "active")  # fmt: skip
    list_filter = ("approval", "role", "active")
    search_fields = ("label", "tenant__slug", "coordinator__slug")
    list_select_related = ("tenant", "coordinator", "federation")
    ordering = ("-id",)


@admin.register(Round, site=cohort_admin_site)
class RoundAdmin(_ReadOnly):
    list_display = ("id", "federation", "number", "kind", "status", "deadline", "closed_at", "model_digest")
    list_filter = ("status", "kind")
    ordering = ("-id",)
    hidden = ("model_storage_name", "strategy_storage_name")


@admin.register(SiteRound, site=cohort_admin_site)
class SiteRoundAdmin(_ReadOnly):
    list_display = ("id", "round", "site", "state", "attempts", "n_examples", "update_norm", "finished_at")
    list_filter = ("state",)
    ordering = ("-id",)
    hidden = ("statistics", "lease_owner", "update_storage_name", "nonce")
