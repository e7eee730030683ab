-- Operations (docs/RETENTION.md, docs/AUDIT.md "Anchoring"): retention moves to
-- Atrium's own code, which records the audit chain's boundary before it drops a
-- month, archives predictions before it removes them, and reads every period from
-- the settings rather than from constants in SQL.

-- atrium_maintain() (sql/0006) also dropped audit months after a fixed 7 years
-- without recording where the chain was cut. Atrium no longer calls it (retention
-- is atrium.operations.retention, with configurable periods); kept for a manual
-- call, it no longer drops audit months.
CREATE OR REPLACE FUNCTION atrium_maintain() RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    created integer;
    purged integer;
BEGIN
    created := atrium_ensure_partitions();
    DELETE FROM jobs WHERE finished_at < now() - INTERVAL '90 days';
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN jsonb_build_object('partitions_created', created, 'audit_partitions_dropped', 0,
                              'jobs_deleted', purged);
END $$;

-- TimescaleDB's own audit_log retention policy would drop chunks without the
-- boundary being recorded and anchored first: Atrium drops them itself.
DO $$
BEGIN
    IF atrium_uses_timescaledb() THEN
        BEGIN
            PERFORM remove_retention_policy('audit_log', if_exists => true);
        EXCEPTION WHEN others THEN
            RAISE WARNING 'audit_log retention policy not removed: %', SQLERRM;
        END;
    END IF;
END $$;

-- One row per retention cut of audit_log: the newest chained row that left with the
-- dropped months (boundary_seq) and its hash, recorded before the drop. The oldest
-- remaining row of the next seq carries this hash as its prev_hash; a signed
-- checkpoint of the same boundary is written to object storage before the drop.
CREATE TABLE audit_retention_cuts (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cut_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    cutoff          TIMESTAMPTZ NOT NULL,
    partitions      TEXT[] NOT NULL,
    rows_dropped    BIGINT NOT NULL CHECK (rows_dropped >= 0),
    boundary_seq    BIGINT NOT NULL CHECK (boundary_seq >= 0),
    boundary_hash   BYTEA NOT NULL CHECK (octet_length(boundary_hash) = 32),
    checkpoint      TEXT NOT NULL
);
REVOKE ALL ON audit_retention_cuts FROM PUBLIC;

-- Expired predictions archived as one Parquet object per month (created_at, UTC).
CREATE TABLE prediction_archives (
    month           DATE PRIMARY KEY CHECK (extract(day FROM month) = 1),
    object_name     VARCHAR(500) NOT NULL,
    row_count       BIGINT NOT NULL CHECK (row_count >= 0),
    file_count      INTEGER NOT NULL CHECK (file_count >= 0),
    sha256          CHAR(64) NOT NULL,
    archived_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    restored_at     TIMESTAMPTZ
);

-- The grant function of sql/0007, unchanged but for the retention cuts: Atrium's
-- runtime role reads them and cannot write them (only the owner's retention run does).
CREATE OR REPLACE FUNCTION atrium_grant_app_role(app_role name DEFAULT 'atrium_app')
RETURNS boolean LANGUAGE plpgsql AS $$
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
                   'audit_chain_partitions, audit_retention_cuts FROM %I', app_role);
    RETURN true;
END $$;

SELECT atrium_grant_app_role();
