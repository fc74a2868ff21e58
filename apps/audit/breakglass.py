"""Break-glass: a staff member's time-limited, audited, read-only view of one tenant's data."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import ApiKey
from apps.audit.models import AuditEvent
from apps.audit.services import audit_record
from apps.tenancy.models import Membership, Tenant
from apps.tenancy.scope import tenant_scope

SESSION_KEY = "cohort_breakglass"
MIN_REASON = 20
RECENT_EVENTS = 100
# What the page shows of an API key: metadata only. The hash column is never even selected.
API_KEY_FIELDS = ("id", "name", "prefix", "scopes", "created_at", "expires_at", "revoked_at", "last_used_at")


class BreakGlassForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.order_by("slug"))
    reason = forms.CharField(
        min_length=MIN_REASON,
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text=f"Why you need to see this tenant's data (at least {MIN_REASON} characters). "
        "It is recorded in the tenant's own audit log.",
    )

    def clean_reason(self) -> str:
        reason = " ".join(self.cleaned_data["reason"].split())
        if len(reason) < MIN_REASON:
            raise forms.ValidationError(f"Give a reason of at least {MIN_REASON} characters.", code="too_short")
        return reason


def _grants(request: HttpRequest) -> dict[str, dict[str, Any]]:
    value = request.session.get(SESSION_KEY)
    return dict(value) if isinstance(value, dict) else {}


def _unexpired(grant: object) -> bool:
    if not isinstance(grant, dict):
        return False
    try:
        return datetime.fromisoformat(str(grant["expires_at"])) > timezone.now()
    except (KeyError, ValueError, TypeError):
        return False


def active_grant(request: HttpRequest, tenant_id: int) -> dict[str, Any] | None:
    """The unexpired grant this session holds for ``tenant_id`` (opened by this user), or None."""
    grant = _grants(request).get(str(tenant_id))
    if not _unexpired(grant) or grant.get("user_id") != request.user.pk:  # type: ignore[union-attr]
        return None
    return grant


def open_grant(request: HttpRequest, *, tenant: Tenant, reason: str) -> dict[str, Any]:
    """Record ``breakglass.opened`` in the tenant's chain and grant this session read access."""
    minutes = int(settings.COHORT_BREAK_GLASS_MINUTES)
    expires_at = (timezone.now() + timedelta(minutes=minutes)).isoformat()
    seq = audit_record(
        action="breakglass.opened",
        tenant=tenant,
        target=tenant,
        details={"reason": reason, "staff_user_id": request.user.pk, "expires_at": expires_at, "minutes": minutes},
    )
    grants = {k: v for k, v in _grants(request).items() if _unexpired(v)}
    grant = {"user_id": request.user.pk, "expires_at": expires_at, "reason": reason, "opened_seq": seq}
    grants[str(tenant.pk)] = grant
    request.session[SESSION_KEY] = grants
    return grant


def open_view(request: HttpRequest, *, site: AdminSite) -> HttpResponse:
    """GET: the form. POST: open a grant (audited) and go to the tenant page."""
    if request.method == "POST":
        form = BreakGlassForm(request.POST)
        if form.is_valid():
            tenant = form.cleaned_data["tenant"]
            open_grant(request, tenant=tenant, reason=form.cleaned_data["reason"])
            return HttpResponseRedirect(reverse("admin:breakglass_tenant", args=[tenant.pk], current_app=site.name))
    else:
        initial = {"tenant": request.GET.get("tenant")} if str(request.GET.get("tenant", "")).isdigit() else {}
        form = BreakGlassForm(initial=initial)
    context = {
        **site.each_context(request),
        "title": "Break-glass access to a tenant",
        "form": form,
        "minutes": settings.COHORT_BREAK_GLASS_MINUTES,
    }
    return TemplateResponse(request, "admin/cohort/breakglass_form.html", context)


def tenant_view(request: HttpRequest, *, tenant_id: int, site: AdminSite) -> HttpResponse:
    """Read-only page of one tenant's members, API key metadata and recent audit events. Every
    view is recorded as ``breakglass.viewed`` in that tenant's chain; without a grant, go to the form."""
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    grant = active_grant(request, tenant_id) if tenant is not None else None
    if tenant is None or grant is None:
        messages.warning(request, "Open a break-glass grant (with a reason) before viewing a tenant's data.")
        url = reverse("admin:breakglass", current_app=site.name)
        return HttpResponseRedirect(f"{url}?tenant={tenant_id}" if tenant is not None else url)
    with tenant_scope(tenant.pk):
        members = list(Membership.objects.order_by("id").values("id", "user_id", "user__email", "role", "created_at"))
        api_keys = list(ApiKey.objects.order_by("id").values(*API_KEY_FIELDS))
        events = list(
            AuditEvent.objects.order_by("-seq").values(
                "seq",
                "created_at",
                "actor_type",
                "actor_label",
                "action",
                "target_type",
                "target_id",
                "outcome",
            )[:RECENT_EVENTS]
        )
        audit_record(
            action="breakglass.viewed",
            tenant=tenant,
            target=tenant,
            details={
                "staff_user_id": request.user.pk,
                "grant_seq": grant.get("opened_seq"),
                "grant_expires_at": grant["expires_at"],
                "member_count": len(members),
                "api_key_count": len(api_keys),
                "event_count": len(events),
            },
        )
    now = timezone.now()
    for key in api_keys:
        key["status"] = (
            "revoked"
            if key["revoked_at"]
            else "expired"
            if key["expires_at"] and key["expires_at"] <= now
            else "active"
        )
    context = {
        **site.each_context(request),
        "title": f"Break-glass view: {tenant.slug}",
        "tenant": tenant,
        "grant": grant,
        "expires_at": datetime.fromisoformat(grant["expires_at"]),
        "members": members,
        "api_keys": api_keys,
        "events": events,
    }
    return TemplateResponse(request, "admin/cohort/breakglass_tenant.html", context)
