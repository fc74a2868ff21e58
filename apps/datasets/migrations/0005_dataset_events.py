"""The owner's live dataset stream (``DatasetEvent``): gap-free per dataset, the owner's rows only;
the platform role reads it like every tenant table."""

import django.db.models.deletion
import django.db.models.manager
from django.db import migrations, models

from apps.tenancy.rls import PLATFORM_ROLE, TENANT_POLICIES, platform_policy_sql, policy_sql

TABLE = "datasets_datasetevent"


class Migration(migrations.Migration):
    dependencies = [("datasets", "0004_federate_grant"), ("tenancy", "0004_platform_role")]

    operations = [
        migrations.CreateModel(
            name="DatasetEvent",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("seq", models.PositiveIntegerField()),
                ("kind", models.CharField(max_length=32)),
                ("data", models.JSONField(default=dict)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "dataset",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="events", to="datasets.dataset"
                    ),
                ),
                (
                    "version",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="datasets.datasetversion",
                    ),
                ),
                (
                    "tenant",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="+", to="tenancy.tenant"
                    ),
                ),
            ],
            options={
                "ordering": ["dataset_id", "seq"],
                "abstract": False,
                "base_manager_name": "all_tenants",
                "default_manager_name": "all_tenants",
                "constraints": [models.UniqueConstraint(fields=("dataset", "seq"), name="dataset_event_seq_once")],
            },
            managers=[("all_tenants", django.db.models.manager.Manager())],
        ),
        migrations.RunSQL(
            policy_sql(TABLE, extra_using=TENANT_POLICIES[TABLE][0], extra_check=TENANT_POLICIES[TABLE][1])
            + platform_policy_sql(TABLE, PLATFORM_ROLE),
            migrations.RunSQL.noop,
        ),
    ]
