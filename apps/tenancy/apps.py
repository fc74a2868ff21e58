"""App config for apps.tenancy: after migrations, grants the serving roles their privileges and
installs the database-context key."""

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _after_migrate(sender: AppConfig, using: str, **kwargs: Any) -> None:
    from django.conf import settings
    from django.db import connections, transaction

    from apps.tenancy.rls import PLATFORM_ROLE, grant_app_privileges, install_context_key

    conn = connections[using]
    if conn.settings_dict.get("USER") in {settings.COHORT_APP_DB_ROLE, PLATFORM_ROLE}:
        return  # serving roles cannot grant; migrations must run as the owner
    if sender.label != "tenancy":  # post_migrate fires once per app; once is enough
        return
    with transaction.atomic(using=using), conn.cursor() as cur:
        grant_app_privileges(cur, str(settings.COHORT_APP_DB_ROLE))
        grant_app_privileges(cur, PLATFORM_ROLE)
        key = settings.COHORT_DB_CONTEXT_KEY
        if key:
            install_context_key(cur, key)


class TenancyConfig(AppConfig):
    name = "apps.tenancy"
    label = "tenancy"

    def ready(self) -> None:
        post_migrate.connect(_after_migrate, dispatch_uid="cohort_grants")
