"""PostgreSQL row-level security: helper functions, per-table policies, app-role grants.

Policy shape (one per tenant table), evaluated once per statement through ``(SELECT fn())``::

    USING      (tenant_id = (SELECT cohort_tenant_id()) [OR extra_using])
    WITH CHECK (tenant_id = (SELECT cohort_tenant_id()) [OR extra_check])

``ENABLE`` and ``FORCE`` are both set, so even the owner role is filtered.
"""

from __future__ import annotations

from django.db import migrations

HELPER_FUNCTIONS_SQL = r"""
CREATE OR REPLACE FUNCTION cohort_tenant_id() RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.tenant_id', true), '')::bigint $$;
CREATE OR REPLACE FUNCTION cohort_user_id() RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.user_id', true), '')::bigint $$;
CREATE OR REPLACE FUNCTION cohort_platform() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT COALESCE(current_setting('app.platform', true), '') = 'on' $$;
CREATE OR REPLACE FUNCTION cohort_lookup_key() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.lookup_key', true), '') $$;
"""

HELPER_FUNCTIONS_REVERSE_SQL = """
DROP FUNCTION IF EXISTS cohort_tenant_id();
DROP FUNCTION IF EXISTS cohort_user_id();
DROP FUNCTION IF EXISTS cohort_platform();
DROP FUNCTION IF EXISTS cohort_lookup_key();
"""

TENANT_MATCH = "tenant_id = (SELECT cohort_tenant_id())"
PLATFORM = "(SELECT cohort_platform())"
LOOKUP = "(SELECT cohort_lookup_key())"
CURRENT_USER_ID = "(SELECT cohort_user_id())"


def policy_sql(table: str, *, extra_using: str = "", extra_check: str = "") -> str:
    using = TENANT_MATCH + (f" OR ({extra_using})" if extra_using else "")
    check = TENANT_MATCH + (f" OR ({extra_check})" if extra_check else "")
    return f"""
ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY;
ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON "{table}";
CREATE POLICY tenant_isolation ON "{table}" AS PERMISSIVE FOR ALL TO PUBLIC
    USING ({using})
    WITH CHECK ({check});
"""


def reverse_policy_sql(table: str) -> str:
    return f"""
DROP POLICY IF EXISTS tenant_isolation ON "{table}";
ALTER TABLE "{table}" NO FORCE ROW LEVEL SECURITY;
ALTER TABLE "{table}" DISABLE ROW LEVEL SECURITY;
"""


def EnableTenantRLS(table: str, *, extra_using: str = "", extra_check: str = "") -> migrations.RunSQL:
    """Migration operation: enable + force RLS on ``table`` with the tenant policy."""
    return migrations.RunSQL(
        policy_sql(table, extra_using=extra_using, extra_check=extra_check),
        reverse_policy_sql(table),
    )


# Tables whose rows the application role may read and append to only through audited functions.
# {table: privileges the app role keeps}
RESTRICTED_TABLES: dict[str, str] = {
    "audit_auditevent": "SELECT",
    "audit_chainhead": "",
    "audit_auditcheckpoint": "SELECT, INSERT",
    "django_migrations": "SELECT",
}


def quote_ident(name: str) -> str:
    """Quote a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def grant_app_privileges(cursor: object, app_role: str) -> None:
    """Give the app role DML on every table, then take back what restricted tables forbid."""
    role = quote_ident(app_role)
    stmts = [
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        f"REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public FROM {role}",
        f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}",
    ]
    for table, keep in RESTRICTED_TABLES.items():
        stmts.append(f"REVOKE ALL ON TABLE {quote_ident(table)} FROM {role}")
        if keep:
            stmts.append(f"GRANT {keep} ON TABLE {quote_ident(table)} TO {role}")
    for stmt in stmts:
        cursor.execute("SAVEPOINT grant_sp")  # type: ignore[attr-defined]
        try:
            cursor.execute(stmt)  # type: ignore[attr-defined]
        except Exception as exc:  # a table not created yet (partial migrate) is fine
            cursor.execute("ROLLBACK TO SAVEPOINT grant_sp")  # type: ignore[attr-defined]
            if "does not exist" not in str(exc):
                raise
        else:
            cursor.execute("RELEASE SAVEPOINT grant_sp")  # type: ignore[attr-defined]
