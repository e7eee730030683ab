-- audit_log, recordings and signal_segments grow with time and are dropped by
-- age, so they are partitioned by month: TimescaleDB hypertables when the
-- extension is preloaded in this server, native range partitions otherwise.
-- Native partitions are created ahead of time by atrium_ensure_partitions()
-- (run by every `atrium migrate` and at start-up); rows outside every monthly
-- partition land in a DEFAULT partition, so no insert ever fails for want of one.
--
-- A partitioned table's unique keys must contain its partition column, so the
-- data model's `id` primary keys become (id, <time column>), and the reference
-- signal_segments.recording_id -> recordings.id is kept by triggers below.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries') LIKE '%timescaledb%' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION atrium_uses_timescaledb() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
$$;

-- Creates `name` with `columns`, partitioned monthly by `time_column`.
CREATE OR REPLACE FUNCTION atrium_create_monthly_table(name text, columns text, time_column text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF atrium_uses_timescaledb() THEN
        EXECUTE format('CREATE TABLE %I (%s)', name, columns);
        EXECUTE format('SELECT create_hypertable(%L, %L, chunk_time_interval => interval ''1 month'')',
                       name, time_column);
    ELSE
        EXECUTE format('CREATE TABLE %I (%s) PARTITION BY RANGE (%I)', name, columns, time_column);
        EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', name || '_default', name);
    END IF;
END $$;

-- Native partitions for the months from `months_back` before to `months_ahead`
-- after the current one. A month whose rows already sit in the DEFAULT partition
-- is left there (PostgreSQL cannot attach a partition over existing default rows).
CREATE OR REPLACE FUNCTION atrium_ensure_monthly_partitions(
    parent text, time_column text, months_back integer DEFAULT 1, months_ahead integer DEFAULT 12)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month_start date;
    partition_name text;
    occupied boolean;
    created integer := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(parent)) THEN
        RETURN 0;
    END IF;
    FOR i IN -months_back .. months_ahead LOOP
        month_start := (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => i))::date;
        partition_name := format('%s_y%sm%s', parent, to_char(month_start, 'YYYY'), to_char(month_start, 'MM'));
        CONTINUE WHEN to_regclass(partition_name) IS NOT NULL;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE %I >= %L::timestamptz AND %I < %L::timestamptz)',
                       parent || '_default', time_column, month_start,
                       time_column, month_start + interval '1 month')
            INTO occupied;
        CONTINUE WHEN occupied;
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       partition_name, parent, month_start::timestamptz,
                       (month_start + interval '1 month')::timestamptz);
        created := created + 1;
    END LOOP;
    RETURN created;
END $$;

CREATE OR REPLACE FUNCTION atrium_ensure_partitions() RETURNS integer
LANGUAGE sql AS $$
    SELECT atrium_ensure_monthly_partitions('audit_log', 'event_time')
         + atrium_ensure_monthly_partitions('recordings', 'recording_date')
         + atrium_ensure_monthly_partitions('signal_segments', 'segment_start')
$$;

-- Retention: drops the whole months (partitions or chunks) of `parent` that ended
-- more than `keep` ago. Returns the number dropped. The only way rows leave audit_log.
CREATE OR REPLACE FUNCTION atrium_drop_expired_partitions(parent text, keep interval)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
    cutoff timestamptz := now() - keep;
BEGIN
    IF atrium_uses_timescaledb() THEN
        EXECUTE format('SELECT count(*) FROM drop_chunks(%L, older_than => %L::timestamptz)', parent, cutoff)
            INTO dropped;
        RETURN dropped;
    END IF;
    FOR part IN
        SELECT c.relname,
               make_date(substring(c.relname FROM '_y(\d{4})m\d{2}$')::int,
                         substring(c.relname FROM '_y\d{4}m(\d{2})$')::int, 1) AS month_start
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass(parent) AND c.relname ~ '_y\d{4}m\d{2}$'
    LOOP
        IF (part.month_start + interval '1 month') <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

SELECT atrium_create_monthly_table('audit_log', $cols$
    id               UUID NOT NULL DEFAULT gen_random_uuid(),
    event_time       TIMESTAMPTZ NOT NULL DEFAULT now(),
    user_id          UUID,
    keycloak_id      VARCHAR(255),
    organization_id  UUID,
    action           VARCHAR(100) NOT NULL,
    resource_type    VARCHAR(100),
    resource_id      UUID,
    ip_address       INET,
    user_agent       TEXT,
    details          JSONB NOT NULL DEFAULT '{}'::jsonb,
    phi_accessed     BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (id, event_time)
$cols$, 'event_time');
CREATE INDEX idx_audit_user_time ON audit_log (user_id, event_time DESC);
CREATE INDEX idx_audit_action_time ON audit_log (action, event_time DESC);
CREATE INDEX idx_audit_resource_time ON audit_log (resource_type, resource_id, event_time DESC);
CREATE INDEX idx_audit_phi_accessed_time ON audit_log (phi_accessed, event_time DESC) WHERE phi_accessed = TRUE;
CREATE INDEX idx_audit_phi ON audit_log (event_time DESC) WHERE phi_accessed = TRUE;

-- The audit trail is append-only in the database itself, whoever connects.
CREATE OR REPLACE FUNCTION atrium_reject_audit_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Expired months are removed with atrium_drop_expired_partitions().';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION atrium_reject_audit_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION atrium_reject_audit_change();

SELECT atrium_create_monthly_table('recordings', $cols$
    id                  UUID NOT NULL DEFAULT gen_random_uuid(),
    recording_type      VARCHAR(50) NOT NULL,
    patient_id          UUID REFERENCES patients (id),
    organization_id     UUID NOT NULL REFERENCES organizations (id),
    recording_date      TIMESTAMPTZ NOT NULL,
    duration_seconds    FLOAT CHECK (duration_seconds >= 0),
    sampling_rate       INTEGER CHECK (sampling_rate > 0),
    number_of_channels  INTEGER CHECK (number_of_channels > 0),
    storage_path        VARCHAR(500),
    metadata            JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id, recording_date)
$cols$, 'recording_date');
CREATE INDEX idx_recordings_id ON recordings (id);
CREATE INDEX idx_recordings_patient_id ON recordings (patient_id);
CREATE INDEX idx_recordings_organization_id ON recordings (organization_id, recording_date DESC);
CREATE TRIGGER recordings_updated_at BEFORE UPDATE ON recordings
    FOR EACH ROW EXECUTE FUNCTION atrium_set_updated_at();

SELECT atrium_create_monthly_table('signal_segments', $cols$
    id             UUID NOT NULL DEFAULT gen_random_uuid(),
    recording_id   UUID NOT NULL,
    channel_index  INTEGER NOT NULL CHECK (channel_index >= 0),
    segment_start  TIMESTAMPTZ NOT NULL,
    segment_end    TIMESTAMPTZ NOT NULL,
    data_blob      BYTEA,
    annotations    JSONB,
    PRIMARY KEY (recording_id, segment_start, channel_index),
    CHECK (segment_end >= segment_start)
$cols$, 'segment_start');

-- signal_segments.recording_id -> recordings.id: a segment needs its recording
-- (locked against a concurrent delete), and deleting a recording deletes its segments.
CREATE OR REPLACE FUNCTION atrium_check_segment_recording() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM recordings WHERE id = NEW.recording_id FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recording % does not exist', NEW.recording_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER signal_segments_recording_exists BEFORE INSERT OR UPDATE OF recording_id ON signal_segments
    FOR EACH ROW EXECUTE FUNCTION atrium_check_segment_recording();

CREATE OR REPLACE FUNCTION atrium_delete_recording_segments() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM signal_segments WHERE recording_id = OLD.id;
    RETURN OLD;
END $$;
CREATE TRIGGER recordings_delete_segments AFTER DELETE ON recordings
    FOR EACH ROW EXECUTE FUNCTION atrium_delete_recording_segments();

SELECT atrium_ensure_partitions();
