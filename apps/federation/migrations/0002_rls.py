"""Row-level security for federations (see ``apps.tenancy.rls.TENANT_POLICIES``), the approval
guard, and audit row capture.

The coordinator may create and update the site rows that name it (pinning versions, dropping a
site, recording selection), but the owner's decision is the owner's: a trigger refuses any change
of the approval columns unless the tenant in scope owns the row, and any change of the row's
identity (owner, coordinator, federation, dataset) at all. The platform role only reads.
"""

from django.db import migrations

from apps.audit.sql import capture_trigger_sql, drop_capture_trigger_sql
from apps.tenancy.rls import PLATFORM_ROLE, TENANT_POLICIES, platform_policy_sql, policy_sql

TABLES = (
    "federation_federation",
    "federation_federationsite",
    "federation_round",
    "federation_siteround",
    "federation_federationevent",
)

AUDITED = {
    "federation_federation": ("event_seq", "current_round"),
    "federation_federationsite": ("last_selected_round",),
    "federation_round": (),
    # Leases are bookkeeping; state changes and submissions are audited.
    "federation_siteround": ("lease_owner", "lease_until", "enqueued_at"),
}

APPROVAL_GUARD_SQL = r"""
CREATE OR REPLACE FUNCTION cohort_federation_site_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Who owns the site, for whom and on which dataset never changes: the coordinator clause of
    -- the policy (it creates rows owned by others) would otherwise let a row be handed to a tenant.
    IF (NEW.tenant_id, NEW.dataset_id, NEW.coordinator_id, NEW.federation_id)
       IS DISTINCT FROM (OLD.tenant_id, OLD.dataset_id, OLD.coordinator_id, OLD.federation_id) THEN
        RAISE EXCEPTION 'the identity of federation site % is fixed', OLD.id USING ERRCODE = '55000';
    END IF;
    IF (NEW.approval, NEW.approved_digest, NEW.approval_expires_at, NEW.decided_by_id, NEW.decided_at,
        NEW.decision_note, NEW.share_metrics)
       IS DISTINCT FROM
       (OLD.approval, OLD.approved_digest, OLD.approval_expires_at, OLD.decided_by_id, OLD.decided_at,
        OLD.decision_note, OLD.share_metrics)
       AND OLD.tenant_id IS DISTINCT FROM cohort_tenant_id() THEN
        RAISE EXCEPTION 'only the dataset owner decides on federation site %', OLD.id USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS federation_site_guard ON federation_federationsite;
CREATE TRIGGER federation_site_guard BEFORE UPDATE ON federation_federationsite
    FOR EACH ROW EXECUTE FUNCTION cohort_federation_site_guard();
-- A new site row starts undecided, whoever creates it.
CREATE OR REPLACE FUNCTION cohort_federation_site_insert_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.approval <> 'pending' AND NEW.tenant_id IS DISTINCT FROM cohort_tenant_id() THEN
        RAISE EXCEPTION 'a federation site starts pending' USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS federation_site_insert_guard ON federation_federationsite;
CREATE TRIGGER federation_site_insert_guard BEFORE INSERT ON federation_federationsite
    FOR EACH ROW EXECUTE FUNCTION cohort_federation_site_insert_guard();
"""


class Migration(migrations.Migration):
    dependencies = [("federation", "0001_initial"), ("datasets", "0004_federate_grant"), ("audit", "0002_chain_sql")]

    operations = [
        *[
            migrations.RunSQL(
                policy_sql(t, extra_using=TENANT_POLICIES[t][0], extra_check=TENANT_POLICIES[t][1])
                + platform_policy_sql(t, PLATFORM_ROLE),
                migrations.RunSQL.noop,
            )
            for t in TABLES
        ],
        migrations.RunSQL(APPROVAL_GUARD_SQL, migrations.RunSQL.noop),
        *[
            migrations.RunSQL(capture_trigger_sql(t, "tenant", ignored), drop_capture_trigger_sql(t))
            for t, ignored in AUDITED.items()
        ],
    ]
