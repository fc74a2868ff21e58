"""Row-level security for datasets (with grant-based visibility for grantees), the immutability
trigger of ready versions, and audit row capture."""

from django.db import migrations

from apps.audit.sql import capture_trigger_sql, drop_capture_trigger_sql
from apps.tenancy.rls import PLATFORM, EnableTenantRLS

CURRENT = "(SELECT cohort_tenant_id())"

# A live grant of the dataset to the tenant in scope (the grants table's own policy lets a
# grantee see the grants addressed to it, so this subquery needs no privileges beyond RLS).
GRANT_FUNCTION_SQL = r"""
CREATE OR REPLACE FUNCTION cohort_dataset_granted(p_dataset bigint, p_perms text[]) RETURNS boolean
    LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM datasets_datasetgrant g
         WHERE g.dataset_id = p_dataset
           AND g.grantee_id = cohort_tenant_id()
           AND g.permission = ANY (p_perms)
           AND g.revoked_at IS NULL
           AND (g.expires_at IS NULL OR g.expires_at > now())
    )
$$;
"""

IMMUTABLE_SQL = r"""
CREATE OR REPLACE FUNCTION cohort_version_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('ready', 'failed', 'purged') THEN
        -- A finished version never changes; a ready one may only be purged (data removed).
        IF (to_jsonb(NEW) - 'status' - 'storage_name' - 'stored_bytes')
           IS DISTINCT FROM (to_jsonb(OLD) - 'status' - 'storage_name' - 'stored_bytes')
           OR NOT (NEW.status = OLD.status OR (OLD.status IN ('ready', 'failed') AND NEW.status = 'purged')) THEN
            RAISE EXCEPTION 'dataset version % is immutable', OLD.id USING ERRCODE = '55000';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS version_immutable ON datasets_datasetversion;
CREATE TRIGGER version_immutable BEFORE UPDATE ON datasets_datasetversion
    FOR EACH ROW EXECUTE FUNCTION cohort_version_immutable();
"""

AUDITED = {
    "datasets_dataset": ("updated_at",),
    "datasets_datasetversion": (),
    "datasets_uploadsession": (),
    "datasets_datasetgrant": (),
    "datasets_datasetquota": (),
    "datasets_privacybudget": ("updated_at",),
    "datasets_budgetreservation": (),
}


class Migration(migrations.Migration):
    dependencies = [
        ("datasets", "0001_initial"),
        ("tenancy", "0002_rls"),
        ("audit", "0002_chain_sql"),
    ]

    operations = [
        EnableTenantRLS(
            "datasets_datasetgrant", extra_using=f"grantee_id = {CURRENT} OR {PLATFORM}", extra_check=PLATFORM
        ),
        migrations.RunSQL(GRANT_FUNCTION_SQL, "DROP FUNCTION IF EXISTS cohort_dataset_granted(bigint, text[]);"),
        EnableTenantRLS(
            "datasets_dataset",
            extra_using=f"{PLATFORM} OR cohort_dataset_granted(id, ARRAY['process', 'download'])",
            extra_check=PLATFORM,
        ),
        # Grantees see only ready de-identified versions.
        EnableTenantRLS(
            "datasets_datasetversion",
            extra_using=(
                f"{PLATFORM} OR (kind = 'deidentified' AND status = 'ready' "
                "AND cohort_dataset_granted(dataset_id, ARRAY['process', 'download']))"
            ),
            extra_check=PLATFORM,
        ),
        EnableTenantRLS("datasets_uploadsession", extra_using=PLATFORM, extra_check=PLATFORM),
        EnableTenantRLS("datasets_uploadpart", extra_using=PLATFORM, extra_check=PLATFORM),
        EnableTenantRLS("datasets_datasetquota", extra_using=PLATFORM, extra_check=PLATFORM),
        EnableTenantRLS(
            "datasets_privacybudget",
            extra_using=f"{PLATFORM} OR cohort_dataset_granted(dataset_id, ARRAY['process'])",
            extra_check=PLATFORM,
        ),
        # A process grantee reserves against the owner's budget: it sees and writes its own rows.
        EnableTenantRLS(
            "datasets_budgetreservation",
            extra_using=f"consumer_id = {CURRENT} OR {PLATFORM}",
            extra_check=(
                f"{PLATFORM} OR (consumer_id = {CURRENT} AND EXISTS (SELECT 1 FROM datasets_privacybudget b "
                "WHERE b.id = budget_id AND cohort_dataset_granted(b.dataset_id, ARRAY['process'])))"
            ),
        ),
        migrations.RunSQL(
            IMMUTABLE_SQL,
            "DROP TRIGGER IF EXISTS version_immutable ON datasets_datasetversion; "
            "DROP FUNCTION IF EXISTS cohort_version_immutable();",
        ),
        *[
            migrations.RunSQL(capture_trigger_sql(t, "tenant", ignored), drop_capture_trigger_sql(t))
            for t, ignored in AUDITED.items()
        ],
    ]
