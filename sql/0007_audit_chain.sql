-- The audit log's hash chain (SPEC §7): every row carries its position `seq`, the
-- hash of the row before it (`prev_hash`) and its own hash (`row_hash`), computed
-- here, in the database, by a BEFORE INSERT trigger, so that any insert from
-- anywhere is chained. docs/AUDIT.md explains the design; in short:
--
-- * row_hash = sha256(canonical serialization of every column, prev_hash included);
--   the serialization is specified in atrium_audit_canonical() below and
--   re-implemented independently by the verifier (plugin/atrium/auth/audit.py).
-- * Appends are serialized by the row lock on the one-row audit_chain_head, taken
--   by the trigger and held until the inserting transaction ends: insert audit
--   rows last in a transaction (or in their own) to keep that short. Rows written
--   before this migration are chained by it, in (event_time, id) order.
-- * audit_chain_partitions counts, per partition (or TimescaleDB chunk), the rows
--   and seq range chained into it. Retention drops whole months, and months do not
--   follow seq order exactly (event_time is the transaction's start, seq the order
--   of entry; rows may also be back-dated), so the verifier uses these counts to
--   tell a month removed by retention from rows removed by hand.
-- * UPDATE, DELETE and TRUNCATE are revoked from PUBLIC and from the application
--   role `atrium_app` when it exists (atrium_grant_app_role()); the chain tables are
--   written only by the trigger (SECURITY DEFINER).

-- One column per statement: TimescaleDB refuses several subcommands at once on a
-- hypertable with compression enabled.
ALTER TABLE audit_log ADD COLUMN seq BIGINT;
ALTER TABLE audit_log ADD COLUMN prev_hash BYTEA;
ALTER TABLE audit_log ADD COLUMN row_hash BYTEA;

-- Verification streams in seq order; GET /api/audit lists one organization newest first.
CREATE INDEX idx_audit_seq ON audit_log (seq);
CREATE INDEX idx_audit_organization_time ON audit_log (organization_id, event_time DESC, id DESC);

CREATE TABLE audit_chain_head (
    singleton  BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    seq        BIGINT NOT NULL CHECK (seq >= 0),               -- the newest row's seq
    row_hash   BYTEA NOT NULL CHECK (octet_length(row_hash) = 32)  -- and its hash
);
-- Genesis: the first row's prev_hash is 32 zero bytes.
INSERT INTO audit_chain_head (seq, row_hash) VALUES (0, decode(repeat('00', 32), 'hex'));

CREATE TABLE audit_chain_partitions (
    relid           OID PRIMARY KEY,
    relname         TEXT NOT NULL,
    row_count       BIGINT NOT NULL CHECK (row_count > 0),
    first_seq       BIGINT NOT NULL,
    last_seq        BIGINT NOT NULL,
    max_event_time  TIMESTAMPTZ NOT NULL
);
COMMENT ON TABLE audit_chain_partitions IS
    'Rows chained into each audit_log partition or chunk, kept after it is dropped: '
    'the verifier accepts missing rows only as far as dropped, expired partitions account for them.';

-- One field of the canonical serialization: '|~' for NULL, else '|<UTF-8 byte length>:<text>'.
-- These two functions are STABLE, not IMMUTABLE, only because convert_to() and
-- extract() are: so declared, the planner inlines them into the trigger's cached
-- plan (declared IMMUTABLE they would be planned anew for every row, ~40x slower).
CREATE FUNCTION atrium_audit_field(value text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL THEN '|~'
                ELSE '|' || octet_length(convert_to(value, 'UTF8')) || ':' || value END
$$;

-- The bytes a row's hash covers: 'atrium-audit-v1' then every column in this order.
-- event_time is whole microseconds since 1970-01-01 UTC (no time zone or DateStyle
-- dependence); ip_address and details are PostgreSQL's own text forms of inet and
-- jsonb (jsonb's is canonical: keys sorted, one spacing); phi_accessed is
-- 'true'/'false'; prev_hash is lower-case hex. Changing this changes every hash:
-- a new format needs a new version tag and a verifier that knows both.
CREATE FUNCTION atrium_audit_canonical(
    id uuid, event_time timestamptz, user_id uuid, keycloak_id text, organization_id uuid,
    action text, resource_type text, resource_id uuid, ip_address inet, user_agent text,
    details jsonb, phi_accessed boolean, seq bigint, prev_hash bytea) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT convert_to('atrium-audit-v1'
        || atrium_audit_field(id::text)
        || atrium_audit_field((extract(epoch FROM event_time) * 1000000)::bigint::text)
        || atrium_audit_field(user_id::text)
        || atrium_audit_field(keycloak_id)
        || atrium_audit_field(organization_id::text)
        || atrium_audit_field(action)
        || atrium_audit_field(resource_type)
        || atrium_audit_field(resource_id::text)
        || atrium_audit_field(ip_address::text)
        || atrium_audit_field(user_agent)
        || atrium_audit_field(details::text)
        || atrium_audit_field(phi_accessed::text)
        || atrium_audit_field(seq::text)
        || atrium_audit_field(encode(prev_hash, 'hex')), 'UTF8')
$$;

-- Chains NEW onto the head: seq, prev_hash and row_hash are always set here, whatever
-- the INSERT said. The head row's lock is held until the transaction ends, so a
-- rolled-back insert leaves no gap and concurrent inserts queue here, one at a time
-- (under READ COMMITTED a waiter then reads the head its predecessor committed).
-- The advisory lock (key: 'audit' in ASCII) is taken first only because its queue
-- hands over to one waiter at a time, which measured 20-30% faster than 50 writers
-- waiting on the row lock; correctness rests on the row lock alone.
-- The hash is a PL/pgSQL expression on purpose: inside the UPDATE's SET list the
-- same expression is not inlined and costs ~40x more.
CREATE FUNCTION atrium_audit_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF NOT isfinite(NEW.event_time) THEN
        RAISE EXCEPTION 'audit_log.event_time must be a finite time, not %', NEW.event_time
            USING ERRCODE = 'datetime_field_overflow';
    END IF;
    PERFORM pg_advisory_xact_lock(418581342580);
    SELECT seq + 1, row_hash INTO STRICT NEW.seq, NEW.prev_hash FROM audit_chain_head FOR UPDATE;
    NEW.row_hash := sha256(atrium_audit_canonical(
        NEW.id, NEW.event_time, NEW.user_id, NEW.keycloak_id, NEW.organization_id,
        NEW.action, NEW.resource_type, NEW.resource_id, NEW.ip_address, NEW.user_agent,
        NEW.details, NEW.phi_accessed, NEW.seq, NEW.prev_hash));
    UPDATE audit_chain_head SET seq = NEW.seq, row_hash = NEW.row_hash;
    INSERT INTO audit_chain_partitions AS p
           (relid, relname, row_count, first_seq, last_seq, max_event_time)
    VALUES (TG_RELID, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, 1, NEW.seq, NEW.seq, NEW.event_time)
    ON CONFLICT (relid) DO UPDATE
       SET row_count = p.row_count + 1, last_seq = excluded.last_seq,
           max_event_time = greatest(p.max_event_time, excluded.max_event_time);
    RETURN NEW;
END $$;

-- A SECURITY DEFINER function must not find its tables through a caller's search_path.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION atrium_audit_chain() SET search_path = %I, pg_temp',
                   current_schema());
END $$;
REVOKE EXECUTE ON FUNCTION atrium_audit_chain() FROM PUBLIC;

-- Rows written before this migration are chained now, in (event_time, id) order.
DO $$
DECLARE
    r record;
    n bigint := 0;
    prev bytea := decode(repeat('00', 32), 'hex');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit_log) THEN
        RETURN;
    END IF;
    ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only;
    FOR r IN SELECT id, event_time FROM audit_log ORDER BY event_time, id LOOP
        n := n + 1;
        UPDATE audit_log a
           SET seq = n, prev_hash = prev,
               row_hash = sha256(atrium_audit_canonical(
                   a.id, a.event_time, a.user_id, a.keycloak_id, a.organization_id, a.action,
                   a.resource_type, a.resource_id, a.ip_address, a.user_agent, a.details,
                   a.phi_accessed, n, prev))
         WHERE a.id = r.id AND a.event_time = r.event_time
        RETURNING a.row_hash INTO prev;
    END LOOP;
    ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only;
    UPDATE audit_chain_head SET seq = n, row_hash = prev;
    INSERT INTO audit_chain_partitions (relid, relname, row_count, first_seq, last_seq, max_event_time)
    SELECT a.tableoid, ns.nspname || '.' || c.relname, count(*), min(a.seq), max(a.seq),
           max(a.event_time)
      FROM audit_log a JOIN pg_class c ON c.oid = a.tableoid
      JOIN pg_namespace ns ON ns.oid = c.relnamespace
     GROUP BY a.tableoid, ns.nspname, c.relname;
END $$;

-- Every row is chained from here on; a row inserted with the trigger disabled must
-- at least fill the chain columns (and will then fail verification).
DO $$
BEGIN
    IF atrium_uses_timescaledb() THEN
        BEGIN  -- some TimescaleDB versions refuse SET NOT NULL once compression is on
            ALTER TABLE audit_log ALTER COLUMN seq SET NOT NULL;
            ALTER TABLE audit_log ALTER COLUMN prev_hash SET NOT NULL;
            ALTER TABLE audit_log ALTER COLUMN row_hash SET NOT NULL;
        EXCEPTION WHEN feature_not_supported OR object_not_in_prerequisite_state THEN
            RAISE WARNING 'audit_log chain columns left nullable: %', SQLERRM;
        END;
    ELSE
        ALTER TABLE audit_log ALTER COLUMN seq SET NOT NULL,
            ALTER COLUMN prev_hash SET NOT NULL, ALTER COLUMN row_hash SET NOT NULL;
    END IF;
END $$;

-- Named to fire after any other BEFORE INSERT trigger (they fire in name order): a
-- trigger that changed NEW after the hash was computed would break the chain.
CREATE TRIGGER zz_audit_log_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION atrium_audit_chain();

-- Privileges. Atrium's own role appends and reads audit rows, nothing more; the
-- append-only triggers stay for the owner and superusers, whom privileges do not bind.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                 WHERE inhparent = 'audit_log'::regclass LOOP
        EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM PUBLIC', part);
    END LOOP;
END $$;
REVOKE ALL ON audit_chain_head, audit_chain_partitions FROM PUBLIC;

-- Grants `app_role` (when that role exists) what Atrium needs on every table of this
-- schema, except changing audit rows or the chain. Returns false when there is no
-- such role. Idempotent: a later migration that adds tables calls it again.
CREATE FUNCTION atrium_grant_app_role(app_role name DEFAULT 'atrium_app') RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    part regclass;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = app_role) THEN
        RETURN false;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), app_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I',
                   current_schema(), app_role);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I',
                   current_schema(), app_role);
    EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM %I', app_role);
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                 WHERE inhparent = 'audit_log'::regclass LOOP
        EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM %I', part, app_role);
    END LOOP;
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON audit_chain_head, '
                   'audit_chain_partitions FROM %I', app_role);
    RETURN true;
END $$;

SELECT atrium_grant_app_role();
