-- Retention and upkeep of the time-partitioned tables (the data model's retention
-- table: audit_log 7 years, jobs 90 days after they finish).
--
-- With TimescaleDB its own background jobs do the work: compression of older
-- chunks and the audit_log retention policy. Each policy is set in its own block:
-- a TimescaleDB edition without compression must not stop Atrium from starting.
DO $$
BEGIN
    IF NOT atrium_uses_timescaledb() THEN
        RETURN;
    END IF;
    BEGIN
        ALTER TABLE audit_log SET (timescaledb.compress, timescaledb.compress_orderby = 'event_time DESC');
        PERFORM add_compression_policy('audit_log', INTERVAL '30 days');
    EXCEPTION WHEN others THEN
        RAISE WARNING 'audit_log compression not enabled: %', SQLERRM;
    END;
    BEGIN
        PERFORM add_retention_policy('audit_log', INTERVAL '7 years');
    EXCEPTION WHEN others THEN
        RAISE WARNING 'audit_log retention policy not set: %', SQLERRM;
    END;
    BEGIN
        ALTER TABLE signal_segments SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'recording_id, channel_index');
        PERFORM add_compression_policy('signal_segments', INTERVAL '7 days');
    EXCEPTION WHEN others THEN
        RAISE WARNING 'signal_segments compression not enabled: %', SQLERRM;
    END;
END $$;

-- Without TimescaleDB Atrium does the upkeep itself, at start-up and every hour:
-- months created a year ahead, audit months past retention dropped whole, old
-- finished jobs deleted. Returns what it did.
CREATE OR REPLACE FUNCTION atrium_maintain() RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    created integer;
    dropped integer := 0;
    purged integer;
BEGIN
    created := atrium_ensure_partitions();
    IF NOT atrium_uses_timescaledb() THEN
        dropped := atrium_drop_expired_partitions('audit_log', INTERVAL '7 years');
    END IF;
    DELETE FROM jobs WHERE finished_at < now() - INTERVAL '90 days';
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN jsonb_build_object('partitions_created', created, 'audit_partitions_dropped', dropped,
                              'jobs_deleted', purged);
END $$;
