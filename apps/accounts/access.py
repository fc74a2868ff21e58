"""Access helper for API keys."""

from apps.accounts.models import ApiKey
from apps.common.errors import AccessDenied
from apps.tenancy.models import Tenant


def access_api_key(*, tenant: Tenant, key_id: int) -> ApiKey:
    key = ApiKey.objects.filter(pk=key_id).first()
    if key is None:
        raise AccessDenied(reason="not_found", tenant_id=tenant.pk, target_type="accounts.apikey", target_id=key_id)
    return key
