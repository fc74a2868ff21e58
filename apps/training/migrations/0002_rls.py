"""Row-level security and audit capture for training jobs, their events and model versions."""

from django.db import migrations

from apps.audit.sql import capture_trigger_sql, drop_capture_trigger_sql
from apps.tenancy.rls import PLATFORM, EnableTenantRLS

AUDITED = {
    # Progress, lease and event counters change every few steps: bookkeeping, not audited per row.
    "training_trainingjob": ("progress", "lease_owner", "lease_until", "event_seq"),
    "training_modelversion": (),
}


class Migration(migrations.Migration):
    dependencies = [("training", "0001_initial"), ("tenancy", "0002_rls"), ("audit", "0002_chain_sql")]

    operations = [
        EnableTenantRLS("training_trainingjob", extra_using=PLATFORM, extra_check=PLATFORM),
        EnableTenantRLS("training_jobevent", extra_using=PLATFORM, extra_check=PLATFORM),
        EnableTenantRLS("training_modelversion", extra_using=PLATFORM, extra_check=PLATFORM),
        *[
            migrations.RunSQL(capture_trigger_sql(t, "tenant", ignored), drop_capture_trigger_sql(t))
            for t, ignored in AUDITED.items()
        ],
    ]
