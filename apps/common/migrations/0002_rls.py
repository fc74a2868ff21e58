"""Row-level security for idempotency records."""

from django.db import migrations

from apps.tenancy.rls import EnableTenantRLS


class Migration(migrations.Migration):
    dependencies = [("common", "0001_initial"), ("tenancy", "0002_rls")]

    operations = [EnableTenantRLS("common_idempotencyrecord")]
