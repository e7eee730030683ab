-- The viewport index carries what a page of a viewport query is chosen by — the
-- sort keys, the row id, and the organization and patient it is scoped by — so
-- that choosing a page among thousands of intersecting polygons is an index-only
-- scan, and only the rows of the page itself are read from the table.
DROP INDEX idx_annotations_viewport;
CREATE INDEX idx_annotations_viewport ON annotations USING gist (target_id, bbox)
    INCLUDE (created_at, root_id, id, organization_id, patient_id)
    WHERE is_latest AND deleted_at IS NULL;
