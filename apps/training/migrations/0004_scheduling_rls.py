"""Row-level security for the training quotas and the usage ledger (the tenant reads its own;
the scheduler reads all in platform scope), and audit capture: quota rows are audited; a job's
``wait_reason`` is bookkeeping the scheduler rewrites, not audited per row (admission is, by an
explicit ``job.admitted`` event)."""

from django.db import migrations

from apps.audit.sql import capture_trigger_sql, drop_capture_trigger_sql
from apps.tenancy.rls import PLATFORM, EnableTenantRLS

JOB_IGNORED = ("progress", "lease_owner", "lease_until", "event_seq", "wait_reason")
JOB_IGNORED_BEFORE = ("progress", "lease_owner", "lease_until", "event_seq")


class Migration(migrations.Migration):
    dependencies = [("training", "0003_scheduling")]

    operations = [
        EnableTenantRLS("training_trainingquota", extra_using=PLATFORM, extra_check=PLATFORM),
        EnableTenantRLS("training_resourceusage", extra_using=PLATFORM, extra_check=PLATFORM),
        migrations.RunSQL(
            capture_trigger_sql("training_trainingquota", "tenant"),
            drop_capture_trigger_sql("training_trainingquota"),
        ),
        migrations.RunSQL(
            capture_trigger_sql("training_trainingjob", "tenant", JOB_IGNORED),
            capture_trigger_sql("training_trainingjob", "tenant", JOB_IGNORED_BEFORE),
        ),
    ]
