"""The platform role replaces the ``app.platform`` switch; every policy context value needs a MAC.

* ``cohort_context_key`` (owner-only) and ``cohort_ctx(name)``: a context setting counts only with
  a valid HMAC bound to the backend (see ``apps.tenancy.rls``). The key itself is installed after
  migrating (``apps.tenancy.apps``), from ``COHORT_DB_CONTEXT_KEY``.
* Every tenant table's policy is rebuilt without any platform clause; the ``cohort_platform`` role
  gets SELECT everywhere and writes only where platform work writes (``PLATFORM_WRITES``).
* The capture mute, the chain heads and the tenant resolver read verified context only.
"""

from django.db import migrations

from apps.audit.sql import CAPTURE_SQL_V2, HEADS_SQL_V2
from apps.tenancy.rls import CONTEXT_KEY_SQL, PLATFORM_ROLE, all_policies_sql

REQUIRE_ROLE_SQL = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{PLATFORM_ROLE}') THEN
        RAISE EXCEPTION 'role {PLATFORM_ROLE} is missing: create it (LOGIN NOSUPERUSER NOBYPASSRLS) before '
            'migrating; scripts/cohort.py does, see docs/architecture.md';
    END IF;
END
$$;
"""

# The caller passes app.user_id's MAC with it (apps.tenancy.selectors.tenant_resolve): still one
# round trip, and an unsigned user id would not count.
RESOLVE_SQL = r"""
DROP FUNCTION IF EXISTS cohort_resolve_tenant(text, bigint);
CREATE FUNCTION cohort_resolve_tenant(p_slug text, p_user bigint, p_user_mac text)
RETURNS TABLE (
    id bigint, slug text, name text, status text, suspended_reason text,
    created_at timestamptz, updated_at timestamptz,
    m_id bigint, m_role text, m_created_at timestamptz, m_updated_at timestamptz
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_user IS NOT NULL THEN
        PERFORM set_config('app.user_id', p_user::text, true), set_config('app.user_id_mac', p_user_mac, true);
    END IF;
    RETURN QUERY
        SELECT t.id, t.slug::text, t.name::text, t.status::text, t.suspended_reason::text, t.created_at,
               t.updated_at, m.id, m.role::text, m.created_at, m.updated_at
          FROM tenancy_tenant t
          LEFT JOIN tenancy_membership m ON m.tenant_id = t.id AND m.user_id = p_user
         WHERE t.slug = p_slug;
END
$$;
"""


# A grantee's scope hides other consumers' reservations, but the budget check must count them all:
# this function returns only the four sums, to a caller who may see the budget. The owner (this
# function's definer) reads the two tables through its own SELECT-only policies.
BUDGET_USAGE_SQL = r"""
-- The data-key counter functions (SECURITY DEFINER, apps.vault.sql) run as the owner; a platform
-- session (key status, re-wrap) must find every key there, as its own role's policy allows.
DROP POLICY IF EXISTS owner_platform_read ON vault_datakey;
CREATE POLICY owner_platform_read ON vault_datakey AS PERMISSIVE FOR SELECT TO CURRENT_USER
    USING ((SELECT cohort_platform()));
DROP POLICY IF EXISTS owner_read ON datasets_budgetreservation;
CREATE POLICY owner_read ON datasets_budgetreservation AS PERMISSIVE FOR SELECT TO CURRENT_USER USING (true);
DROP POLICY IF EXISTS owner_read ON datasets_privacybudget;
CREATE POLICY owner_read ON datasets_privacybudget AS PERMISSIVE FOR SELECT TO CURRENT_USER USING (true);
CREATE OR REPLACE FUNCTION cohort_budget_usage(p_budget bigint)
RETURNS TABLE (epsilon_spent numeric, delta_spent numeric, epsilon_reserved numeric, delta_reserved numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM datasets_privacybudget b WHERE b.id = p_budget
                   AND (b.tenant_id = cohort_tenant_id() OR cohort_platform()
                        OR cohort_dataset_granted(b.dataset_id, ARRAY['process']))) THEN
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


# Tables that later migrations create (with their own policies): this one must not touch them.
LATER_TABLES = ("federation_", "datasets_datasetevent")


class Migration(migrations.Migration):
    dependencies = [
        ("tenancy", "0003_resolve_function"),
        ("accounts", "0003_rls"),
        ("audit", "0002_chain_sql"),
        ("common", "0002_rls"),
        ("datasets", "0002_rls"),
        ("training", "0006_multi_node"),
        ("vault", "0002_rls_counters"),
    ]

    operations = [
        migrations.RunSQL(REQUIRE_ROLE_SQL, migrations.RunSQL.noop),
        migrations.RunSQL(CONTEXT_KEY_SQL, migrations.RunSQL.noop),
        # Apps created after this migration apply their own policies (federation: 0002_rls).
        migrations.RunSQL(all_policies_sql(PLATFORM_ROLE, exclude_prefixes=LATER_TABLES), migrations.RunSQL.noop),
        migrations.RunSQL(CAPTURE_SQL_V2, migrations.RunSQL.noop),
        migrations.RunSQL(HEADS_SQL_V2, migrations.RunSQL.noop),
        migrations.RunSQL(RESOLVE_SQL, migrations.RunSQL.noop),
        migrations.RunSQL(BUDGET_USAGE_SQL, migrations.RunSQL.noop),
    ]
