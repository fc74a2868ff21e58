"""Operators' command for per-tenant training quotas (each change audited, before and after).

manage.py training_quota show [TENANT_SLUG]
manage.py training_quota set TENANT_SLUG [--max-concurrent-jobs N] [--max-cpu-jobs N]
                                         [--gpu-hours-per-month H] [--max-site-tasks N]
                                                                      ("default" clears one)
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.tenancy.models import Tenant
from apps.tenancy.scope import tenant_scope
from apps.training import scheduler, selectors

FLAGS = {
    "max_concurrent_jobs": ("--max-concurrent-jobs", int),
    "max_cpu_jobs": ("--max-cpu-jobs", int),
    "gpu_hours_per_month": ("--gpu-hours-per-month", float),
    "max_site_tasks": ("--max-site-tasks", int),
}


class Command(BaseCommand):
    help = (
        "Show or set a tenant's training quotas (concurrent jobs, CPU jobs, GPU-hours per month, "
        "federation site tasks)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        show = sub.add_parser("show", help="Quota, usage this month and waiting jobs")
        show.add_argument("tenant", nargs="?", help="Tenant slug (default: all tenants)")
        setp = sub.add_parser("set", help="Change overrides; 'default' clears one")
        setp.add_argument("tenant", help="Tenant slug")
        for name, (flag, _kind) in FLAGS.items():
            setp.add_argument(flag, dest=name, default=None, metavar="N|default")

    def _tenant(self, slug: str) -> Tenant:
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug {slug!r}.")
        return tenant

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["action"] == "show":
            tenants = [self._tenant(opts["tenant"])] if opts.get("tenant") else list(Tenant.objects.order_by("slug"))
            for tenant in tenants:
                with tenant_scope(tenant.pk):
                    overview = selectors.tenant_overview(tenant.pk)
                self.stdout.write(json.dumps({"tenant": tenant.slug, **overview}, sort_keys=True))
            return
        tenant = self._tenant(opts["tenant"])
        changes: dict[str, Any] = {}
        for name, (flag, kind) in FLAGS.items():
            raw = opts.get(name)
            if raw is None:
                continue
            if raw == "default":
                changes[name] = None
                continue
            try:
                value = kind(raw)
            except ValueError as exc:
                raise CommandError(f"{flag}: {raw!r} is not a number (or 'default').") from exc
            if value < 0:
                raise CommandError(f"{flag}: must be >= 0.")
            changes[name] = value
        if not changes:
            raise CommandError("Nothing to change: give at least one of " + ", ".join(f for f, _ in FLAGS.values()))
        scheduler.quota_set(tenant_id=tenant.pk, changes=changes, actor_label="manage.py training_quota")
        with tenant_scope(tenant.pk):
            overview = selectors.tenant_overview(tenant.pk)
        self.stdout.write(json.dumps({"tenant": tenant.slug, **overview}, sort_keys=True))
