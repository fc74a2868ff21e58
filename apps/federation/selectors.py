"""Federation reads. The coordinator sees its federations, their rounds, slots and events; a
site owner sees the federations it takes part in, their rounds and its own site's slots and
events (RLS decides: these read with the bypass manager inside the caller's tenant scope)."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from apps.federation.models import Federation, FederationEvent, FederationSite, Round, SiteRound
from apps.tenancy.models import Tenant


def federation_list(*, tenant: Tenant) -> QuerySet[Federation]:
    """Federations the tenant coordinates or has a site in."""
    return Federation.all_tenants.filter(
        Q(tenant=tenant) | Q(pk__in=FederationSite.all_tenants.filter(tenant=tenant).values("federation_id"))
    )


def federation_sites(*, federation: Federation) -> QuerySet[FederationSite]:
    return FederationSite.all_tenants.filter(federation=federation).select_related("tenant").order_by("id")


def round_list(*, federation: Federation) -> QuerySet[Round]:
    return Round.all_tenants.filter(federation=federation).order_by("number")


def slots_of(*, federation: Federation) -> QuerySet[SiteRound]:
    return (
        SiteRound.all_tenants.filter(round__federation=federation)
        .select_related("round")
        .order_by("round__number", "site_id")
    )


def event_list(*, federation: Federation, after: int) -> QuerySet[FederationEvent]:
    return FederationEvent.all_tenants.filter(federation=federation, seq__gt=after).order_by("seq")


def site_inbox(*, tenant: Tenant) -> QuerySet[FederationSite]:
    """The tenant's own sites in any federation (its approvals)."""
    return FederationSite.objects.filter(tenant=tenant).select_related("federation", "coordinator").order_by("-id")
