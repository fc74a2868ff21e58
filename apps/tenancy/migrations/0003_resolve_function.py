"""One round trip to resolve a tenant by slug and the caller's membership in it.

SECURITY INVOKER: it runs as the app role, so row-level security applies as for any query; it only
saves the two extra round trips (set the user setting, then read the membership).
"""

from django.db import migrations

SQL = r"""
CREATE OR REPLACE FUNCTION cohort_resolve_tenant(p_slug text, p_user bigint)
RETURNS TABLE (
    id bigint, slug text, name text, status text, suspended_reason text,
    created_at timestamptz, updated_at timestamptz,
    m_id bigint, m_role text, m_created_at timestamptz, m_updated_at timestamptz
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_user IS NOT NULL THEN
        PERFORM set_config('app.user_id', p_user::text, true);
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


class Migration(migrations.Migration):
    dependencies = [("tenancy", "0002_rls")]

    operations = [migrations.RunSQL(SQL, "DROP FUNCTION IF EXISTS cohort_resolve_tenant(text, bigint);")]
