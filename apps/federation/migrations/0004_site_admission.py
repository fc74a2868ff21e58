"""Admission of site tasks by the scheduler: a slot's queue, when it was admitted and why it waits.

A slot selected before this migration is admitted (and its task sent again) at the next pass; a
duplicate delivery finds the slot taken, as always. ``wait_reason`` is bookkeeping the scheduler
rewrites (not audited per row); admission itself is audited.
"""

from django.db import migrations, models

from apps.audit.sql import capture_trigger_sql

IGNORED_BEFORE = ("lease_owner", "lease_until", "enqueued_at")
IGNORED = (*IGNORED_BEFORE, "wait_reason")


class Migration(migrations.Migration):
    dependencies = [("federation", "0003_registry")]

    operations = [
        migrations.AddField(model_name="siteround", name="queue", field=models.CharField(default="fl", max_length=120)),
        migrations.AddField(
            model_name="siteround", name="admitted_at", field=models.DateTimeField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="siteround",
            name="wait_reason",
            field=models.CharField(blank=True, default="", max_length=300),
        ),
        migrations.RunSQL(
            capture_trigger_sql("federation_siteround", "tenant", IGNORED),
            capture_trigger_sql("federation_siteround", "tenant", IGNORED_BEFORE),
        ),
    ]
