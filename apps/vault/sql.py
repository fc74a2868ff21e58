"""SQL for data-key usage counters: one sequence per key, reachable only through these
SECURITY DEFINER functions, which check that the key belongs to the tenant in scope."""

COUNTER_SQL = r"""
CREATE OR REPLACE FUNCTION cohort_dek_counter_create(p_key bigint) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM vault_datakey WHERE id = p_key
                   AND (tenant_id = cohort_tenant_id() OR cohort_platform())) THEN
        RAISE EXCEPTION 'unknown data key %', p_key USING ERRCODE = '42704';
    END IF;
    EXECUTE format('CREATE SEQUENCE IF NOT EXISTS %I AS bigint MINVALUE 1 START 1', 'cohort_dek_' || p_key);
END
$$;

CREATE OR REPLACE FUNCTION cohort_dek_use(p_key bigint, p_n integer) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v bigint;
BEGIN
    IF p_n < 1 OR p_n > 1048576 THEN
        RAISE EXCEPTION 'reserve between 1 and 1048576 encryptions' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM vault_datakey WHERE id = p_key AND status IN ('active', 'retired')
                   AND (tenant_id = cohort_tenant_id() OR cohort_platform())) THEN
        RAISE EXCEPTION 'data key % is not usable', p_key USING ERRCODE = '42704';
    END IF;
    -- nextval is never rolled back: the counter stays an upper bound of the nonces used.
    EXECUTE format('SELECT max(x) FROM (SELECT nextval(%L::regclass) FROM generate_series(1, %s)) s(x)',
                   'cohort_dek_' || p_key, p_n) INTO v;
    RETURN v;
END
$$;

CREATE OR REPLACE FUNCTION cohort_dek_used(p_key bigint) RETURNS bigint
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM vault_datakey WHERE id = p_key
                   AND (tenant_id = cohort_tenant_id() OR cohort_platform())) THEN
        RAISE EXCEPTION 'unknown data key %', p_key USING ERRCODE = '42704';
    END IF;
    IF to_regclass('cohort_dek_' || p_key) IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format('SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM %I', 'cohort_dek_' || p_key)
        INTO v;
    RETURN v;
END
$$;

REVOKE ALL ON FUNCTION cohort_dek_counter_create(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohort_dek_use(bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION cohort_dek_used(bigint) FROM PUBLIC;
"""

REVERSE_SQL = r"""
DROP FUNCTION IF EXISTS cohort_dek_counter_create(bigint);
DROP FUNCTION IF EXISTS cohort_dek_use(bigint, integer);
DROP FUNCTION IF EXISTS cohort_dek_used(bigint);
"""
