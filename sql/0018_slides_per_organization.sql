-- Slides belong to an organization, and so does the name a lab gives them: two
-- organizations may both have a slide "S-001" (a global unique key would make one
-- organization's upload fail because of another's, and tell it that the other
-- exists). Within an organization a slide_id names one live slide; a soft-deleted
-- slide frees its name for a re-scan. DICOM WSI series find their slide row by
-- their Series Instance UID.
ALTER TABLE slides DROP CONSTRAINT slides_slide_id_key;
CREATE INDEX idx_slides_slide_id ON slides (slide_id);
CREATE UNIQUE INDEX slides_organization_slide_id_key ON slides (organization_id, slide_id)
    WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX slides_series_instance_uid_key
    ON slides (organization_id, (metadata ->> 'series_instance_uid'))
    WHERE deleted_at IS NULL AND metadata ? 'series_instance_uid';

-- The list: newest first, in pages, per organization.
CREATE INDEX idx_slides_organization_created ON slides (organization_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX idx_slides_scan_date ON slides (organization_id, scan_date) WHERE deleted_at IS NULL;

ALTER TABLE slides ADD CONSTRAINT slides_file_size_bytes_check CHECK (file_size_bytes >= 0);
