"""Row-level security: helper functions and tenant policies for memberships and invitations."""

from django.db import migrations

from apps.tenancy.rls import (
    CURRENT_USER_ID,
    HELPER_FUNCTIONS_REVERSE_SQL,
    HELPER_FUNCTIONS_SQL,
    LOOKUP,
    PLATFORM,
    EnableTenantRLS,
)


class Migration(migrations.Migration):
    dependencies = [("tenancy", "0001_initial")]

    operations = [
        migrations.RunSQL(HELPER_FUNCTIONS_SQL, HELPER_FUNCTIONS_REVERSE_SQL),
        # A user sees their own memberships in every tenant (to list "my tenants"); compliance
        # staff manage memberships in platform scope.
        EnableTenantRLS(
            "tenancy_membership", extra_using=f"user_id = {CURRENT_USER_ID} OR {PLATFORM}", extra_check=PLATFORM
        ),
        # An invitee finds their invitation by the hash of the token they hold.
        EnableTenantRLS("tenancy_invitation", extra_using=f"token_hash = {LOOKUP} OR {PLATFORM}", extra_check=PLATFORM),
    ]
