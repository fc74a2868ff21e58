"""The audit chain in SQL: append function, append-only triggers, RLS, row-change capture."""

from django.db import migrations

from apps.audit.sql import (
    CREATE_SQL,
    OWNER_INSERT_POLICY_SQL,
    REVERSE_SQL,
    capture_trigger_sql,
    drop_capture_trigger_sql,
)
from apps.tenancy.rls import PLATFORM, EnableTenantRLS

# Tables whose every row change is audited (by a service event, or by the capture trigger).
AUDITED_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "tenancy_tenant": ("self", ("updated_at",)),
    "tenancy_membership": ("tenant", ("updated_at",)),
    "tenancy_invitation": ("tenant", ()),
    "accounts_apikey": ("tenant", ("last_used_at",)),
    "accounts_user": ("none", ("last_login",)),
}


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
        ("tenancy", "0002_rls"),
        ("accounts", "0003_rls"),
    ]

    operations = [
        migrations.RunSQL(CREATE_SQL, REVERSE_SQL),
        EnableTenantRLS("audit_auditevent", extra_using=PLATFORM, extra_check=PLATFORM),
        migrations.RunSQL(OWNER_INSERT_POLICY_SQL, "DROP POLICY IF EXISTS audit_owner_append ON audit_auditevent;"),
        *[
            migrations.RunSQL(capture_trigger_sql(table, source, ignored), drop_capture_trigger_sql(table))
            for table, (source, ignored) in AUDITED_TABLES.items()
        ],
    ]
