-- Background work (backfill, reconcile, de-identification, retention, archive),
-- kept 90 days after it finishes (the data model's retention table).
CREATE TABLE jobs (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    kind             VARCHAR(50) NOT NULL,
    status           VARCHAR(20) NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    organization_id  UUID REFERENCES organizations (id),
    created_by       UUID REFERENCES users (id),
    parameters       JSONB NOT NULL DEFAULT '{}'::jsonb,
    progress_done    BIGINT NOT NULL DEFAULT 0,
    progress_total   BIGINT,
    result           JSONB,
    error            TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ
);
CREATE INDEX idx_jobs_status_created ON jobs (status, created_at);
CREATE INDEX idx_jobs_kind_created ON jobs (kind, created_at DESC);
CREATE INDEX idx_jobs_organization_id ON jobs (organization_id);
CREATE INDEX idx_jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TRIGGER jobs_updated_at BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION atrium_set_updated_at();

-- The mirror's cursor into Orthanc's change log: the last change applied, advanced
-- in the same transaction as the rows it covers.
CREATE TABLE mirror_state (
    name        VARCHAR(50) PRIMARY KEY,
    last_seq    BIGINT NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO mirror_state (name, last_seq) VALUES ('orthanc', 0);
