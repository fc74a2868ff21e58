"""App config for apps.tenancy: grants the app role its privileges after migrations."""

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _grant_after_migrate(sender: AppConfig, using: str, **kwargs: Any) -> None:
    from django.conf import settings
    from django.db import connections

    from apps.tenancy.rls import grant_app_privileges

    conn = connections[using]
    if conn.settings_dict.get("USER") == settings.COHORT_APP_DB_ROLE:
        return  # the app role cannot grant; migrations must run as the owner
    from django.db import transaction

    with transaction.atomic(using=using), conn.cursor() as cur:
        grant_app_privileges(cur, str(settings.COHORT_APP_DB_ROLE))


class TenancyConfig(AppConfig):
    name = "apps.tenancy"
    label = "tenancy"

    def ready(self) -> None:
        post_migrate.connect(_grant_after_migrate, dispatch_uid="cohort_grants")
