"""The ``federate`` grant: a dataset usable only as a federation participant.

``process`` and ``download`` imply it. A ``federate`` grantee sees the dataset's released versions'
metadata and may reserve budget on it (within its allotment) like a ``process`` grantee, but it
cannot start jobs on it (training checks ``process``)."""

from django.db import migrations, models

from apps.tenancy.rls import TENANT_POLICIES, policy_sql

TABLES = ("datasets_dataset", "datasets_datasetversion", "datasets_privacybudget", "datasets_budgetreservation")

BUDGET_USAGE_SQL = r"""
CREATE OR REPLACE FUNCTION cohort_budget_usage(p_budget bigint)
RETURNS TABLE (epsilon_spent numeric, delta_spent numeric, epsilon_reserved numeric, delta_reserved numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM datasets_privacybudget b WHERE b.id = p_budget
                   AND (b.tenant_id = cohort_tenant_id() OR cohort_platform()
                        OR cohort_dataset_granted(b.dataset_id, ARRAY['process', 'federate']))) THEN
        RAISE EXCEPTION 'unknown privacy budget %', p_budget USING ERRCODE = '42704';
    END IF;
    RETURN QUERY SELECT
        COALESCE(sum(r.epsilon_spent) FILTER (WHERE r.state = 'committed'), 0)::numeric,
        COALESCE(sum(r.delta_spent) FILTER (WHERE r.state = 'committed'), 0)::numeric,
        COALESCE(sum(r.epsilon) FILTER (WHERE r.state = 'reserved'), 0)::numeric,
        COALESCE(sum(r.delta) FILTER (WHERE r.state = 'reserved'), 0)::numeric
      FROM datasets_budgetreservation r WHERE r.budget_id = p_budget;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("datasets", "0003_grant_budget_allotment"), ("tenancy", "0004_platform_role")]

    operations = [
        migrations.AlterField(
            model_name="datasetgrant",
            name="permission",
            field=models.CharField(
                choices=[
                    ("process", "Process (train; never read rows)"),
                    ("download", "Download (read the de-identified version)"),
                    ("federate", "Federate (a federation participant only: no jobs, no per-site model)"),
                ],
                max_length=16,
            ),
        ),
        *[
            migrations.RunSQL(
                policy_sql(t, extra_using=TENANT_POLICIES[t][0], extra_check=TENANT_POLICIES[t][1]),
                migrations.RunSQL.noop,
            )
            for t in TABLES
        ],
        migrations.RunSQL(BUDGET_USAGE_SQL, migrations.RunSQL.noop),
    ]
