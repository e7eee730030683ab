-- Resumable uploads (atrium/uploads/): a file too large for one request arrives as
-- chunks, in any order, each stored as its own object; a consumer (POST /api/slides)
-- then claims the complete upload, which assembles the chunks into one object.
-- An upload belongs to the user who created it. Rows past expires_at are removed
-- with their chunk objects (UploadStore.expire): a consumed one is kept until then
-- only so that a late chunk is told "consumed" rather than "not found".
CREATE TABLE uploads (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id  UUID NOT NULL REFERENCES organizations (id),
    user_id          UUID NOT NULL REFERENCES users (id),
    filename         VARCHAR(255) NOT NULL,
    media_type       VARCHAR(255) NOT NULL DEFAULT 'application/octet-stream',
    size_bytes       BIGINT NOT NULL CHECK (size_bytes > 0),
    -- Distinct bytes held by the chunks, kept by every chunk write.
    received_bytes   BIGINT NOT NULL DEFAULT 0 CHECK (received_bytes BETWEEN 0 AND size_bytes),
    status           VARCHAR(16) NOT NULL DEFAULT 'receiving'
                     CHECK (status IN ('receiving', 'complete', 'consumed')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at       TIMESTAMPTZ NOT NULL,
    consumed_at      TIMESTAMPTZ,
    CHECK ((status = 'complete') = (received_bytes = size_bytes) OR status = 'consumed'),
    CHECK ((status = 'consumed') = (consumed_at IS NOT NULL))
);
CREATE INDEX idx_uploads_expires_at ON uploads (expires_at);
CREATE INDEX idx_uploads_user_id ON uploads (user_id);
CREATE TRIGGER uploads_updated_at BEFORE UPDATE ON uploads
    FOR EACH ROW EXECUTE FUNCTION atrium_set_updated_at();

-- One row per distinct byte range received; a chunk sent again replaces its row (and
-- its object). Overlapping ranges may coexist: assembly picks a cover by offsets.
CREATE TABLE upload_chunks (
    upload_id    UUID NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    start_byte   BIGINT NOT NULL CHECK (start_byte >= 0),
    end_byte     BIGINT NOT NULL,  -- exclusive: the chunk holds end_byte - start_byte bytes
    object_name  TEXT NOT NULL UNIQUE,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (upload_id, start_byte, end_byte),
    CHECK (end_byte > start_byte)
);
