"""Reads for API keys."""

from django.db.models import QuerySet

from apps.accounts.models import ApiKey
from apps.tenancy.models import Tenant


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(tenant=tenant).select_related("created_by")
