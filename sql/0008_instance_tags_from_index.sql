-- The mirror writes an instance first with the tags Orthanc's index holds, then
-- completes them from the file when Orthanc is idle (metadata.tags_source moves
-- from 'index' to 'file'). This partial index finds the ones still to complete
-- without scanning the table; it is empty once the mirror has caught up.
CREATE INDEX idx_instances_tags_from_index ON instances (id)
    WHERE metadata->>'tags_source' = 'index' AND deleted_at IS NULL;
