-- Whether an annotation's or a prediction's target is still there: a study,
-- series or instance deleted in Orthanc (soft-deleted by the mirror, with
-- everything below it), a deleted slide. Lists that span many targets filter on
-- it, so that what was said about deleted data disappears with it; the rows stay,
-- and come back if the target does.
CREATE FUNCTION atrium_target_is_live(kind text, target uuid) RETURNS boolean
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
        WHEN 'recording' THEN EXISTS (SELECT 1 FROM recordings r WHERE r.id = target)
        ELSE FALSE
    END
$$;
