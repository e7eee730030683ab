-- A study's organization, decided before its first instance reaches Orthanc: an
-- upload by a user (STOW-RS through Atrium's DICOMweb gateway, POST /api/instances)
-- records the uploader's organization here first, and the mirror files the study
-- under it. Without a row, the calling AE title's mapping or the default
-- organization decides. Once the study exists, its own organization_id rules.
CREATE TABLE study_assignments (
    study_instance_uid  VARCHAR(255) PRIMARY KEY,
    organization_id     UUID NOT NULL REFERENCES organizations (id),
    assigned_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
