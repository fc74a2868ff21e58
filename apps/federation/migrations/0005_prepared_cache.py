"""Sites' prepared tensors cached encrypted (``PreparedCache``), in the coordinator's scope only;
the platform role reads and removes them like the rest of a federation's state."""

import django.db.models.deletion
import django.db.models.manager
from django.db import migrations, models

from apps.tenancy.rls import PLATFORM_ROLE, TENANT_POLICIES, platform_policy_sql, policy_sql

TABLE = "federation_preparedcache"


class Migration(migrations.Migration):
    dependencies = [
        ("federation", "0004_site_admission"),
        ("tenancy", "0004_platform_role"),
        ("vault", "0002_rls_counters"),
    ]

    operations = [
        migrations.CreateModel(
            name="PreparedCache",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("inputs_digest", models.CharField(max_length=64)),
                ("storage_name", models.CharField(max_length=300)),
                ("sha256", models.CharField(max_length=64)),
                ("plaintext_bytes", models.BigIntegerField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "federation",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="+", to="federation.federation"
                    ),
                ),
                (
                    "key",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="+", to="vault.datakey"
                    ),
                ),
                (
                    "site",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="+", to="federation.federationsite"
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
                "ordering": ["federation_id", "site_id"],
                "abstract": False,
                "base_manager_name": "all_tenants",
                "default_manager_name": "all_tenants",
                "constraints": [models.UniqueConstraint(fields=("site", "inputs_digest"), name="prepared_cache_once")],
            },
            managers=[
                ("all_tenants", django.db.models.manager.Manager()),
            ],
        ),
        migrations.RunSQL(
            policy_sql(TABLE, extra_using=TENANT_POLICIES[TABLE][0], extra_check=TENANT_POLICIES[TABLE][1])
            + platform_policy_sql(TABLE, PLATFORM_ROLE),
            migrations.RunSQL.noop,
        ),
    ]
