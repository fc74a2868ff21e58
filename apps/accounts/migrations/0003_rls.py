"""Row-level security for API keys: visible in their tenant, or by prefix during authentication."""

from django.db import migrations

from apps.tenancy.rls import LOOKUP, EnableTenantRLS


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_initial"), ("tenancy", "0002_rls")]

    operations = [EnableTenantRLS("accounts_apikey", extra_using=f"prefix = {LOOKUP}")]
