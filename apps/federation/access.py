"""Access helpers for federation objects (missing and foreign answer the same 404)."""

from __future__ import annotations

from apps.common.access import get_or_deny
from apps.federation import selectors
from apps.federation.models import Federation, FederationSite
from apps.tenancy.models import Tenant


def access_federation(*, tenant: Tenant, federation_id: int) -> Federation:
    """A federation the tenant coordinates or takes part in."""
    return get_or_deny(selectors.federation_list(tenant=tenant), federation_id, tenant=tenant)


def access_coordinated(*, tenant: Tenant, federation_id: int) -> Federation:
    """A federation the tenant coordinates (the participants' view of it does not start or cancel)."""
    return get_or_deny(Federation.objects.all(), federation_id, tenant=tenant)


def access_own_site(*, tenant: Tenant, site_id: int) -> FederationSite:
    return get_or_deny(FederationSite.objects.select_related("federation"), site_id, tenant=tenant)
