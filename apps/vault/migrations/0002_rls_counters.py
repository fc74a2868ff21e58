"""Row-level security and audit capture for data keys; the per-key encryption counters."""

from django.db import migrations

from apps.audit.sql import capture_trigger_sql, drop_capture_trigger_sql
from apps.tenancy.rls import PLATFORM, EnableTenantRLS
from apps.vault.sql import COUNTER_SQL, REVERSE_SQL


class Migration(migrations.Migration):
    dependencies = [("vault", "0001_initial"), ("audit", "0002_chain_sql"), ("tenancy", "0002_rls")]

    operations = [
        # Platform scope: `manage.py keys rotate-kek` re-wraps every tenant's keys.
        EnableTenantRLS("vault_datakey", extra_using=PLATFORM, extra_check=PLATFORM),
        migrations.RunSQL(capture_trigger_sql("vault_datakey", "tenant"), drop_capture_trigger_sql("vault_datakey")),
        migrations.RunSQL(COUNTER_SQL, REVERSE_SQL),
    ]
