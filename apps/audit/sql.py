"""SQL for the audit log: the append function, append-only triggers, row-change capture.

The hash is computed inside PostgreSQL by ``cohort_audit_append`` (SECURITY DEFINER, owned by the
schema owner). The application role has SELECT on the events and EXECUTE on the function, and no
INSERT/UPDATE/DELETE/TRUNCATE: it cannot write an event any other way, so it cannot pick its own
sequence number, time or hash. The canonical encoding is length-prefixed text, reproduced in
Python by ``apps.audit.chain.canonical`` for independent verification.
"""

FIELDS = (
    "chain",
    "seq",
    "prev_hash",
    "created_us",
    "tenant_id",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "target_type",
    "target_id",
    "outcome",
    "request_id",
    "source_ip",
    "user_agent",
    "details",
)

CREATE_SQL = r"""
CREATE OR REPLACE FUNCTION cohort_audit_field(v text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN v IS NULL THEN '-' ELSE octet_length(v)::text || ':' || v END $$;

CREATE OR REPLACE FUNCTION cohort_audit_canonical(
    p_chain text, p_seq bigint, p_prev text, p_us bigint, p_tenant bigint, p_actor_type text,
    p_actor_id text, p_actor_label text, p_action text, p_target_type text, p_target_id text,
    p_outcome text, p_request_id text, p_source_ip text, p_user_agent text, p_details text
) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'cohort-audit-v1'
        || cohort_audit_field(p_chain) || cohort_audit_field(p_seq::text)
        || cohort_audit_field(p_prev) || cohort_audit_field(p_us::text)
        || cohort_audit_field(p_tenant::text) || cohort_audit_field(p_actor_type)
        || cohort_audit_field(p_actor_id) || cohort_audit_field(p_actor_label)
        || cohort_audit_field(p_action) || cohort_audit_field(p_target_type)
        || cohort_audit_field(p_target_id) || cohort_audit_field(p_outcome)
        || cohort_audit_field(p_request_id) || cohort_audit_field(p_source_ip)
        || cohort_audit_field(p_user_agent) || cohort_audit_field(p_details)
$$;

CREATE OR REPLACE FUNCTION cohort_audit_append(
    p_tenant bigint, p_actor_type text, p_actor_id text, p_actor_label text, p_action text,
    p_target_type text, p_target_id text, p_outcome text, p_request_id text, p_source_ip text,
    p_user_agent text, p_details text
) RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    v_chain text := CASE WHEN p_tenant IS NULL THEN 'platform' ELSE 't' || p_tenant::text END;
    v_seq bigint;
    v_prev text;
    v_now timestamptz := date_trunc('microseconds', clock_timestamp());
    v_us bigint;
    v_hash text;
BEGIN
    IF p_action IS NULL OR p_action = '' OR p_outcome NOT IN ('success', 'denied', 'error') THEN
        RAISE EXCEPTION 'cohort_audit_append: bad action/outcome' USING ERRCODE = '22023';
    END IF;
    INSERT INTO audit_chainhead (chain, seq, head_hash)
        VALUES (v_chain, 0, repeat('0', 64)) ON CONFLICT (chain) DO NOTHING;
    -- The row lock serializes writers of one chain, so concurrent transactions cannot fork it.
    SELECT seq, head_hash INTO v_seq, v_prev FROM audit_chainhead WHERE chain = v_chain FOR UPDATE;
    v_seq := v_seq + 1;
    v_us := (extract(epoch FROM v_now) * 1000000)::bigint;
    v_hash := encode(sha256(convert_to(cohort_audit_canonical(
        v_chain, v_seq, v_prev, v_us, p_tenant, p_actor_type, p_actor_id, p_actor_label, p_action,
        p_target_type, p_target_id, p_outcome, p_request_id, p_source_ip, p_user_agent, p_details
    ), 'UTF8')), 'hex');
    INSERT INTO audit_auditevent (
        tenant_id, chain, seq, created_at, actor_type, actor_id, actor_label, action, target_type,
        target_id, outcome, request_id, source_ip, user_agent, details, prev_hash, hash
    ) VALUES (
        p_tenant, v_chain, v_seq, v_now, p_actor_type, p_actor_id, p_actor_label, p_action,
        p_target_type, p_target_id, p_outcome, p_request_id, p_source_ip, p_user_agent,
        p_details, v_prev, v_hash
    );
    UPDATE audit_chainhead SET seq = v_seq, head_hash = v_hash WHERE chain = v_chain;
    RETURN v_seq;
END
$$;

CREATE OR REPLACE FUNCTION cohort_audit_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = '42501';
END
$$;

DROP TRIGGER IF EXISTS audit_append_only ON audit_auditevent;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION cohort_audit_forbid_change();
DROP TRIGGER IF EXISTS audit_no_truncate ON audit_auditevent;
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION cohort_audit_forbid_change();

-- Chain heads for verification by the app role: only the chain of the tenant in scope, or all
-- chains in platform (compliance console) scope.
CREATE OR REPLACE FUNCTION cohort_audit_heads() RETURNS TABLE (chain text, seq bigint, head_hash text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT h.chain::text, h.seq, h.head_hash::text FROM audit_chainhead h
     WHERE h.chain = 't' || cohort_tenant_id()::text
        OR COALESCE(current_setting('app.platform', true), '') = 'on'
$$;

DROP TRIGGER IF EXISTS checkpoint_append_only ON audit_auditcheckpoint;
CREATE TRIGGER checkpoint_append_only BEFORE UPDATE OR DELETE ON audit_auditcheckpoint
    FOR EACH ROW EXECUTE FUNCTION cohort_audit_forbid_change();

-- Row-change capture for audited tables: every INSERT/UPDATE/DELETE that no service declared
-- (queryset.update(), bulk_create/bulk_update, raw SQL) becomes one event per row.
CREATE OR REPLACE FUNCTION cohort_audit_capture() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_row jsonb;
    v_old jsonb;
    v_cols text[];
    v_tenant bigint;
    v_action text;
BEGIN
    IF COALESCE(current_setting('app.audit_context', true), '') <> '' THEN
        RETURN NULL;  -- a service records its own event for this change in this transaction
    END IF;
    IF TG_OP = 'INSERT' THEN
        v_row := to_jsonb(NEW); v_action := 'db.row_inserted';
    ELSIF TG_OP = 'UPDATE' THEN
        v_row := to_jsonb(NEW); v_old := to_jsonb(OLD); v_action := 'db.row_updated';
        SELECT array_agg(k ORDER BY k) INTO v_cols
            FROM jsonb_object_keys(v_row) AS k WHERE v_row -> k IS DISTINCT FROM v_old -> k;
        IF v_cols IS NULL OR v_cols <@ TG_ARGV[1:] THEN
            RETURN NULL;  -- nothing changed, or only bookkeeping columns (e.g. last_login)
        END IF;
    ELSE
        v_row := to_jsonb(OLD); v_action := 'db.row_deleted';
    END IF;
    IF TG_ARGV[0] = 'self' THEN
        v_tenant := (v_row ->> 'id')::bigint;
    ELSIF TG_ARGV[0] = 'tenant' THEN
        v_tenant := (v_row ->> 'tenant_id')::bigint;
    ELSE
        v_tenant := NULL;
    END IF;
    PERFORM cohort_audit_append(
        v_tenant, 'database', session_user::text, current_user::text, v_action, TG_TABLE_NAME,
        v_row ->> 'id', 'success', NULL, NULL, NULL,
        jsonb_build_object('op', TG_OP, 'columns', COALESCE(to_jsonb(v_cols), '[]'::jsonb))::text
    );
    RETURN NULL;
END
$$;
"""

REVERSE_SQL = r"""
DROP TRIGGER IF EXISTS audit_append_only ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_no_truncate ON audit_auditevent;
DROP TRIGGER IF EXISTS checkpoint_append_only ON audit_auditcheckpoint;
DROP FUNCTION IF EXISTS cohort_audit_heads();
DROP FUNCTION IF EXISTS cohort_audit_capture();
DROP FUNCTION IF EXISTS cohort_audit_forbid_change();
DROP FUNCTION IF EXISTS cohort_audit_append(bigint, text, text, text, text, text, text, text, text, text, text, text);
DROP FUNCTION IF EXISTS cohort_audit_canonical(
    text, bigint, text, bigint, bigint, text, text, text, text, text, text, text, text, text, text, text
);
DROP FUNCTION IF EXISTS cohort_audit_field(text);
"""

# Only the owner (running cohort_audit_append as SECURITY DEFINER) inserts; the app role has no
# INSERT privilege at all. The tenant policy still governs what the app role can SELECT.
OWNER_INSERT_POLICY_SQL = """
DROP POLICY IF EXISTS audit_owner_append ON audit_auditevent;
CREATE POLICY audit_owner_append ON audit_auditevent AS PERMISSIVE FOR INSERT TO CURRENT_USER
    WITH CHECK (true);
"""


def capture_trigger_sql(table: str, tenant_source: str, ignored_columns: tuple[str, ...] = ()) -> str:
    """SQL that attaches row-change capture to ``table``.

    ``tenant_source``: 'tenant' (row has tenant_id), 'self' (the tenants table), 'none' (platform).
    ``ignored_columns``: updates touching only these columns are bookkeeping, not audited.
    """
    args = ", ".join(f"'{a}'" for a in (tenant_source, *ignored_columns))
    return f"""
DROP TRIGGER IF EXISTS audit_capture ON "{table}";
CREATE TRIGGER audit_capture AFTER INSERT OR UPDATE OR DELETE ON "{table}"
    FOR EACH ROW EXECUTE FUNCTION cohort_audit_capture({args});
"""


def drop_capture_trigger_sql(table: str) -> str:
    return f'DROP TRIGGER IF EXISTS audit_capture ON "{table}";'


# --- v2 (tenancy 0004): the mute and the heads read only MAC-verified context ------------------
# The row-capture mute is honoured only when ``app.audit_context`` carries a valid MAC
# (``cohort_audit_context()``), so SQL running as the app role cannot silence capture; "all
# chains" needs the platform role, not a setting.
_CAPTURE_START = CREATE_SQL.index("CREATE OR REPLACE FUNCTION cohort_audit_capture()")
CAPTURE_SQL_V2 = CREATE_SQL[_CAPTURE_START:].replace(
    "IF COALESCE(current_setting('app.audit_context', true), '') <> '' THEN",
    "IF cohort_audit_context() IS NOT NULL THEN",
)
assert "cohort_audit_context()" in CAPTURE_SQL_V2

HEADS_SQL_V2 = r"""
CREATE OR REPLACE FUNCTION cohort_audit_heads() RETURNS TABLE (chain text, seq bigint, head_hash text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT h.chain::text, h.seq, h.head_hash::text FROM audit_chainhead h
     WHERE CASE WHEN cohort_tenant_id() IS NOT NULL THEN h.chain = 't' || cohort_tenant_id()::text
                ELSE cohort_platform() END
$$;
"""
