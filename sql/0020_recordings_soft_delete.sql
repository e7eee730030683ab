-- Recordings are soft-deleted like slides: the row and its segments stay (an
-- annotation on a deleted recording disappears with it, and comes back if the
-- recording does). ALTER TABLE and CREATE INDEX on the partitioned parent (or
-- the hypertable) reach every partition (chunk), present and future.
ALTER TABLE recordings ADD COLUMN deleted_at TIMESTAMPTZ;

-- GET /api/recordings: an organization's live recordings, newest first.
CREATE INDEX idx_recordings_list ON recordings (organization_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

CREATE OR REPLACE FUNCTION atrium_target_is_live(kind text, target uuid) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE kind
        WHEN 'study' THEN EXISTS (
            SELECT 1 FROM studies s WHERE s.id = target AND s.deleted_at IS NULL)
        WHEN 'series' THEN EXISTS (
            SELECT 1 FROM series se JOIN studies s ON s.id = se.study_id
            WHERE se.id = target AND se.deleted_at IS NULL AND s.deleted_at IS NULL)
        WHEN 'instance' THEN EXISTS (
            SELECT 1 FROM instances i JOIN series se ON se.id = i.series_id
            JOIN studies s ON s.id = se.study_id
            WHERE i.id = target AND i.deleted_at IS NULL AND se.deleted_at IS NULL
              AND s.deleted_at IS NULL)
        WHEN 'slide' THEN EXISTS (
            SELECT 1 FROM slides sl WHERE sl.id = target AND sl.deleted_at IS NULL)
        WHEN 'recording' THEN EXISTS (
            SELECT 1 FROM recordings r WHERE r.id = target AND r.deleted_at IS NULL)
        ELSE FALSE
    END
$$;
