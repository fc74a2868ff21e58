"""Access helper for API keys (missing and foreign answer the same 404)."""

from apps.accounts.models import ApiKey
from apps.common.access import get_or_deny
from apps.tenancy.models import Tenant


def access_api_key(*, tenant: Tenant, key_id: int) -> ApiKey:
    return get_or_deny(ApiKey.objects.all(), key_id, tenant=tenant)
