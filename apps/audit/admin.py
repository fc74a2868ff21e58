"""Console admin for audit events: strictly read-only, with chain verification and CSV export (audited)."""

from __future__ import annotations

import json
import re
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html

from apps.audit.api.views import EXPORT_LIMIT, export_events
from apps.audit.models import EVENT_FIELDS, AuditEvent
from apps.audit.services import _SECRET_KEY_RE, audit_record
from apps.audit.verification import audit_verify
from apps.common.admin_site import ConsoleModelAdmin, cohort_admin_site

_FILTER_KEY_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def changelist_filters(request: HttpRequest) -> dict[str, str]:
    """The changelist's filters and search (query string) as safe audit details: no secret-like
    keys, bounded sizes."""
    out: dict[str, str] = {}
    for key, value in list(request.GET.items())[:30]:
        if _FILTER_KEY_RE.match(key) and not _SECRET_KEY_RE.search(key):
            out[key] = str(value)[:200]
    return out


# The public event fields, with the tenant after the time and details pretty-printed.
CONSOLE_FIELDS: tuple[str, ...] = tuple(
    f
    for name in EVENT_FIELDS
    if name != "id"
    for f in ((name, "tenant") if name == "created_at" else ("details_pretty",) if name == "details" else (name,))
)


@admin.register(AuditEvent, site=cohort_admin_site)
class AuditEventAdmin(ConsoleModelAdmin):
    list_display = ("created_at", "chain", "seq", "tenant", "actor_type", "actor_label", "action", "outcome")
    list_filter = ("tenant", "actor_type", "action", "outcome", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("action", "actor_label", "=target_id", "=request_id")
    search_help_text = "Search by action or actor label (contains), or an exact target id or request id."
    list_select_related = ("tenant",)
    ordering = ("-created_at", "-id")
    list_per_page = 100
    actions = ("verify_chain", "export_csv")
    fields = CONSOLE_FIELDS
    readonly_fields = CONSOLE_FIELDS

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        from apps.audit.status import latest_status

        status = latest_status()
        if status is not None and status["ok"] is False and request.method == "GET":
            self.message_user(
                request,
                f"Audit log tampering detected by the scheduled verification at {status['checked_at']}: "
                f"broken chain(s) {', '.join(status['broken_chains'])} (event audit.chain_broken).",
                messages.ERROR,
            )
        return super().changelist_view(request, extra_context)

    @admin.display(description="details")
    def details_pretty(self, obj: AuditEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.details_dict, indent=2, sort_keys=True))

    @admin.action(description="Verify hash chain (of the selected events' tenants)")
    def verify_chain(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> None:
        tenant_ids = set(queryset.order_by().values_list("tenant_id", flat=True).distinct())
        # A platform event selected (or nothing narrower known): verify every chain.
        targets: list[int | None] = [None]
        if tenant_ids and None not in tenant_ids:
            targets = [*sorted(t for t in tenant_ids if t is not None)]
        problems: list[dict[str, Any]] = []
        num_events = num_chains = 0
        for tenant_id in targets:
            # With a tenant in context the heads are that tenant's chain alone; without, all.
            result = audit_verify(tenant_id=tenant_id)
            num_events += result.num_events
            num_chains += len(result.chains)
            problems.extend(p.as_dict() for p in result.problems)
        ok = not problems
        scope = "all" if targets == [None] else "tenants"
        audit_record(
            action="audit.verified",
            outcome="success" if ok else "error",
            target_type="audit.auditevent",
            details={
                "scope": scope,
                "tenant_ids": [t for t in targets if t is not None][:50],
                "ok": ok,
                "num_events": num_events,
                "num_chains": num_chains,
                "problems": problems[:10],
                "source": "admin",
            },
        )
        where = "every chain" if scope == "all" else f"{num_chains} tenant chain(s)"
        if ok:
            self.message_user(request, f"Hash chain OK: {num_events} events in {where} verified.", messages.SUCCESS)
            return
        first = "; ".join(
            f"chain {p['chain']} breaks at seq {p['seq']} ({p['kind']}: {p['message']})" for p in problems[:5]
        )
        self.message_user(request, f"Hash chain BROKEN in {where}: {first}", messages.ERROR)

    @admin.action(description="Export selected as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> HttpResponse:
        events = list(queryset.order_by("chain", "seq")[:EXPORT_LIMIT])
        audit_record(
            action="audit.exported",
            tenant=None,
            target_type="audit.auditevent",
            details={
                "format": "csv",
                "num_events": len(events),
                "filters": changelist_filters(request),
                "select_across": request.POST.get("select_across") == "1",
                "truncated": len(events) >= EXPORT_LIMIT,
                "source": "admin",
            },
        )
        body, content_type = export_events(events, "csv")
        response = HttpResponse(body, content_type=content_type)
        response["Content-Disposition"] = 'attachment; filename="audit-events.csv"'
        return response
