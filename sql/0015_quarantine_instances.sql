-- Instances the mirror will not let a parser see: a file that breaks the limits of
-- atrium/dicom/scan.py (sequences nested thousands deep, lengths past the end of the
-- file...), or one that stopped Orthanc while it was being read. The file is kept
-- in object storage (object_key) and removed from Orthanc, so that no reader —
-- the mirror, a DICOMweb client, Orthanc's own API — trips on it again.
CREATE TABLE quarantined_instances (
    id                    UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    orthanc_id            VARCHAR(64) NOT NULL UNIQUE,
    organization_id       UUID REFERENCES organizations (id),
    -- As Orthanc indexed them; a hostile file's values may be anything, so cut.
    sop_instance_uid      VARCHAR(255),
    series_instance_uid   VARCHAR(255),
    study_instance_uid    VARCHAR(255),
    remote_aet            VARCHAR(64),
    origin                VARCHAR(32),
    detected_by           VARCHAR(16) NOT NULL CHECK (detected_by IN ('scan', 'crash')),
    reason                TEXT NOT NULL,
    file_size_bytes       BIGINT,
    object_key            TEXT,
    removed_from_orthanc  BOOLEAN NOT NULL DEFAULT false,
    quarantined_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_quarantined_instances_time ON quarantined_instances (quarantined_at DESC);
