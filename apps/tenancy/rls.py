"""PostgreSQL row-level security: helper functions, per-table policies, role grants.

Policy shape (one per tenant table), evaluated once per statement through ``(SELECT fn())``::

    tenant_isolation  FOR ALL TO PUBLIC
        USING      (tenant_id = (SELECT cohort_tenant_id()) [OR extra_using])
        WITH CHECK (tenant_id = (SELECT cohort_tenant_id()) [OR extra_check])
    platform_read     FOR SELECT TO cohort_platform USING (true)
    platform_<cmd>    FOR INSERT/UPDATE/DELETE TO cohort_platform   (only where platform work writes)

``ENABLE`` and ``FORCE`` are both set, so even the owner role is filtered.

The context the policies read (tenant, user, lookup key, audit mute) lives in transaction-local
settings that any role can set, so each value is honoured only with its MAC: ``app.<name>_mac`` =
HMAC-SHA-256(context key, ``cohort-ctx-v1|<backend pid>|<name>|<value>``). The key is in an
owner-only table (``cohort_context_key``) read by the SECURITY DEFINER ``cohort_ctx``; the serving
processes hold it in ``COHORT_DB_CONTEXT_KEY`` and sign through ``apps.tenancy.scope`` alone. SQL
that runs as the app role (an injection, a careless helper) cannot forge a MAC, so no setting it can
write opens another tenant's rows. Cross-tenant (platform) reads need the ``cohort_platform`` login
role, which the app role is not a member of: a role, not a switch.
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

# The platform role (its name is fixed: policies name it, `scripts/cohort.py` creates it).
PLATFORM_ROLE = "cohort_platform"

CONTEXT_KEY_SQL = r"""
CREATE TABLE IF NOT EXISTS cohort_context_key (
    id smallint PRIMARY KEY CHECK (id = 1),
    k_ipad bytea NOT NULL,
    k_opad bytea NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON TABLE cohort_context_key FROM PUBLIC;

-- The value of app.<p_name> if its MAC is valid for this backend, else NULL. PARALLEL RESTRICTED:
-- a parallel worker has another pid, so the check must run in the leader.
CREATE OR REPLACE FUNCTION cohort_ctx(p_name text) RETURNS text
    LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v text := current_setting('app.' || p_name, true);
    m text := current_setting('app.' || p_name || '_mac', true);
    k record;
BEGIN
    IF v IS NULL OR v = '' OR m IS NULL OR m = '' THEN
        RETURN NULL;
    END IF;
    SELECT k_ipad, k_opad INTO k FROM public.cohort_context_key WHERE id = 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF encode(sha256(k.k_opad || sha256(k.k_ipad || convert_to(
            'cohort-ctx-v1|' || pg_backend_pid()::text || '|' || p_name || '|' || v, 'UTF8'))), 'hex') = m THEN
        RETURN v;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION cohort_tenant_id() RETURNS bigint
    LANGUAGE sql STABLE PARALLEL RESTRICTED AS $$ SELECT cohort_ctx('tenant_id')::bigint $$;
CREATE OR REPLACE FUNCTION cohort_user_id() RETURNS bigint
    LANGUAGE sql STABLE PARALLEL RESTRICTED AS $$ SELECT cohort_ctx('user_id')::bigint $$;
CREATE OR REPLACE FUNCTION cohort_lookup_key() RETURNS text
    LANGUAGE sql STABLE PARALLEL RESTRICTED AS $$ SELECT cohort_ctx('lookup_key') $$;
CREATE OR REPLACE FUNCTION cohort_audit_context() RETURNS text
    LANGUAGE sql STABLE PARALLEL RESTRICTED AS $$ SELECT cohort_ctx('audit_context') $$;
-- True for a session of the platform role (a login of it or of a member); no setting the app role
-- can write changes it. Read from SECURITY DEFINER functions too, hence session_user; ``role`` is
-- the SET ROLE in force ('none' without one): a test login that is a member of both serving roles
-- counts as the platform only while it has switched to it.
CREATE OR REPLACE FUNCTION cohort_platform() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT pg_has_role(session_user, 'cohort_platform', 'MEMBER')
                 AND current_setting('role') IN ('none', 'cohort_platform') $$;
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


# Every tenant table and what, besides its own tenant's rows, the tenant in scope may see/write.
# {table: (extra_using, extra_check)}. No entry mentions the platform: that is a role (below).
CURRENT = "(SELECT cohort_tenant_id())"
SITE_OF_CURRENT = f"WHERE s.tenant_id = {CURRENT}"
TENANT_POLICIES: dict[str, tuple[str, str]] = {
    "accounts_apikey": (f"prefix = {LOOKUP}", ""),
    "audit_auditevent": ("", ""),
    "common_idempotencyrecord": ("", ""),
    "datasets_datasetgrant": (f"grantee_id = {CURRENT}", ""),
    "datasets_dataset": ("cohort_dataset_granted(id, ARRAY['process', 'download', 'federate'])", ""),
    "datasets_datasetversion": (
        "kind = 'deidentified' AND status = 'ready' "
        "AND cohort_dataset_granted(dataset_id, ARRAY['process', 'download', 'federate'])",
        "",
    ),
    "datasets_uploadsession": ("", ""),
    "datasets_uploadpart": ("", ""),
    "datasets_datasetquota": ("", ""),
    "datasets_datasetevent": ("", ""),  # the owner's own stream
    "datasets_privacybudget": ("cohort_dataset_granted(dataset_id, ARRAY['process', 'federate'])", ""),
    "datasets_budgetreservation": (
        f"consumer_id = {CURRENT}",
        f"consumer_id = {CURRENT} AND EXISTS (SELECT 1 FROM datasets_privacybudget b "
        "WHERE b.id = budget_id AND cohort_dataset_granted(b.dataset_id, ARRAY['process', 'federate']))",
    ),
    # Federations (apps.federation.models): the coordinator owns the federation, its rounds, slots
    # and events; a dataset owner owns its site row. A tenant with a site sees the federation and
    # its rounds, and its own site's slots and events; the coordinator sees (and creates) the site
    # rows naming it. Approval columns change only in the owner's scope (trigger, federation 0002).
    "federation_federation": (f"id IN (SELECT s.federation_id FROM federation_federationsite s {SITE_OF_CURRENT})", ""),
    "federation_federationsite": (f"coordinator_id = {CURRENT}", f"coordinator_id = {CURRENT}"),
    "federation_round": (
        f"federation_id IN (SELECT s.federation_id FROM federation_federationsite s {SITE_OF_CURRENT})",
        "",
    ),
    "federation_siteround": (f"site_id IN (SELECT s.id FROM federation_federationsite s {SITE_OF_CURRENT})", ""),
    "federation_federationevent": (
        f"federation_id IN (SELECT s.federation_id FROM federation_federationsite s {SITE_OF_CURRENT}) "
        f"AND (site_id IS NULL OR site_id IN (SELECT s.id FROM federation_federationsite s {SITE_OF_CURRENT}))",
        "",
    ),
    "federation_preparedcache": ("", ""),  # the coordinator's own encrypted cache (the platform's tasks)
    "tenancy_membership": (f"user_id = {CURRENT_USER_ID}", ""),
    "tenancy_invitation": (f"token_hash = {LOOKUP}", ""),
    "training_trainingjob": ("", ""),
    "training_jobevent": ("", ""),
    "training_modelversion": ("", ""),
    "training_trainingquota": ("", ""),
    "training_resourceusage": ("", ""),
    "vault_datakey": ("", ""),
}

# What platform work (its own role) may change, by table. Everything else it may only read.
#   scheduler: admits, re-queues and gives up jobs, writes their wait events and usage ledger;
#   console: manages memberships and invitations; key re-wrap: re-wraps data keys.
PLATFORM_WRITES: dict[str, tuple[str, ...]] = {
    "tenancy_membership": ("INSERT", "UPDATE", "DELETE"),
    "tenancy_invitation": ("UPDATE", "DELETE"),
    "training_trainingjob": ("UPDATE",),
    "training_jobevent": ("INSERT",),
    "training_resourceusage": ("INSERT", "UPDATE"),
    "training_trainingquota": ("INSERT", "UPDATE"),
    "vault_datakey": ("UPDATE",),
}


def platform_policy_sql(table: str, role: str = PLATFORM_ROLE) -> str:
    """The platform role's policies on ``table``: read everything, write only what it must."""
    r = quote_ident(role)
    out = [
        f'DROP POLICY IF EXISTS platform_read ON "{table}";',
        f'CREATE POLICY platform_read ON "{table}" AS PERMISSIVE FOR SELECT TO {r} USING (true);',
    ]
    for cmd in ("INSERT", "UPDATE", "DELETE"):
        name = f"platform_{cmd.lower()}"
        out.append(f'DROP POLICY IF EXISTS {name} ON "{table}";')
        if cmd not in PLATFORM_WRITES.get(table, ()):
            continue
        clause = {"INSERT": "WITH CHECK (true)", "UPDATE": "USING (true) WITH CHECK (true)", "DELETE": "USING (true)"}
        out.append(f'CREATE POLICY {name} ON "{table}" AS PERMISSIVE FOR {cmd} TO {r} {clause[cmd]};')
    return "\n".join(out)


def all_policies_sql(role: str = PLATFORM_ROLE, *, exclude_prefixes: tuple[str, ...] = ()) -> str:
    """Every tenant table's tenant policy (without any platform switch) and platform policies.

    ``exclude_prefixes``: tables a migration must leave alone because a later migration creates
    them (and applies their policies itself)."""
    parts = []
    for table, (using, check) in TENANT_POLICIES.items():
        if table.startswith(exclude_prefixes):
            continue
        parts.append(policy_sql(table, extra_using=using, extra_check=check))
        parts.append(platform_policy_sql(table, role))
    return "\n".join(parts)


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
    "cohort_context_key": "",
}


def quote_ident(name: str) -> str:
    """Quote a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def grant_app_privileges(cursor: object, app_role: str) -> None:
    """Give a serving role (app or platform) DML on every table, then take back what restricted
    tables forbid. Row-level security decides which rows each role reaches."""
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


def context_key_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA-256's inner and outer padded keys, so PostgreSQL needs only ``sha256()``."""
    if not 16 <= len(key) <= 64:
        raise ValueError("the database-context key must be 16 to 64 bytes")
    block = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)


def install_context_key(cursor: object, key_b64: str) -> None:
    """Store (or replace) the context key as the owner. Existing MACs stop counting at once."""
    import base64

    ipad, opad = context_key_pads(base64.b64decode(key_b64))
    cursor.execute(  # type: ignore[attr-defined]
        "SAVEPOINT ctx_key_sp"
    )
    try:
        cursor.execute(  # type: ignore[attr-defined]
            "INSERT INTO cohort_context_key (id, k_ipad, k_opad) VALUES (1, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET k_ipad = EXCLUDED.k_ipad, k_opad = EXCLUDED.k_opad, installed_at = now()",
            [ipad, opad],
        )
    except Exception as exc:  # before tenancy 0004 (a partial migrate) the table does not exist
        cursor.execute("ROLLBACK TO SAVEPOINT ctx_key_sp")  # type: ignore[attr-defined]
        if "does not exist" not in str(exc):
            raise
    else:
        cursor.execute("RELEASE SAVEPOINT ctx_key_sp")  # type: ignore[attr-defined]
