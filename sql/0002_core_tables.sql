-- Organizations, users, patients and the DICOM hierarchy, as in the data model.
-- Additions beyond the data model, each needed by the mirror:
--   patients.orthanc_id     Orthanc names a deleted patient by its own id;
--   series/instances.deleted_at  a deletion in Orthanc is a soft delete here;
--   orthanc_id indexes      the mirror looks rows up by Orthanc id.
-- Patients are unique per (organization, MRN): one MRN may exist in several
-- organizations, each keeping its own record.

CREATE TABLE organizations (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name        VARCHAR(255) NOT NULL,
    type        VARCHAR(50) CHECK (type IN ('hospital', 'clinic', 'lab', 'university', 'research')),
    email       VARCHAR(255),
    phone       VARCHAR(50),
    address     JSONB,
    settings    JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at  TIMESTAMPTZ,
    CONSTRAINT organizations_name_key UNIQUE (name)
);

CREATE TABLE users (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    keycloak_id      VARCHAR(255) NOT NULL,
    organization_id  UUID REFERENCES organizations (id),
    username         VARCHAR(255) NOT NULL,
    email            VARCHAR(255),
    first_name       VARCHAR(255),
    last_name        VARCHAR(255),
    roles            VARCHAR(50)[] NOT NULL DEFAULT '{}',
    preferences      JSONB NOT NULL DEFAULT '{}'::jsonb,
    last_login_at    TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT users_keycloak_id_key UNIQUE (keycloak_id),
    CONSTRAINT users_username_key UNIQUE (username),
    CONSTRAINT users_email_key UNIQUE (email)
);
CREATE INDEX idx_users_organization_id ON users (organization_id);

CREATE TABLE patients (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    patient_id       VARCHAR(255) NOT NULL,
    patient_id_hash  VARCHAR(64),
    organization_id  UUID NOT NULL REFERENCES organizations (id),
    first_name       VARCHAR(255),
    last_name        VARCHAR(255),
    date_of_birth    DATE,
    sex              VARCHAR(10) CHECK (sex IN ('M', 'F', 'O', 'U')),
    metadata         JSONB NOT NULL DEFAULT '{}'::jsonb,
    is_deidentified  BOOLEAN NOT NULL DEFAULT false,
    orthanc_id       VARCHAR(255),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at       TIMESTAMPTZ,
    CONSTRAINT patients_organization_id_patient_id_key UNIQUE (organization_id, patient_id)
);
CREATE INDEX idx_patients_patient_id ON patients (patient_id);
CREATE INDEX idx_patients_patient_id_hash ON patients (patient_id_hash);
CREATE INDEX idx_patients_organization_id ON patients (organization_id);
CREATE INDEX idx_patients_orthanc_id ON patients (orthanc_id);
-- coalesce: a patient with only a last name must still be found by it.
CREATE INDEX idx_patients_name_fts ON patients
    USING gin (to_tsvector('english', coalesce(first_name, '') || ' ' || coalesce(last_name, '')));

CREATE TABLE studies (
    id                   UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    study_instance_uid   VARCHAR(255) NOT NULL,
    patient_id           UUID NOT NULL REFERENCES patients (id),
    organization_id      UUID NOT NULL REFERENCES organizations (id),
    accession_number     VARCHAR(255),
    study_date           DATE,
    study_time           TIME,
    study_description    TEXT,
    modality             VARCHAR(50),
    referring_physician  VARCHAR(255),
    number_of_series     INTEGER NOT NULL DEFAULT 0,
    number_of_instances  INTEGER NOT NULL DEFAULT 0,
    orthanc_id           VARCHAR(255),
    storage_location     VARCHAR(500),
    storage_size_bytes   BIGINT NOT NULL DEFAULT 0,
    metadata             JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at           TIMESTAMPTZ,
    CONSTRAINT studies_study_instance_uid_key UNIQUE (study_instance_uid)
);
CREATE INDEX idx_studies_patient_id ON studies (patient_id);
CREATE INDEX idx_studies_organization_id ON studies (organization_id);
CREATE INDEX idx_studies_study_date ON studies (study_date);
CREATE INDEX idx_studies_modality ON studies (modality);
CREATE INDEX idx_studies_accession_number ON studies (accession_number);
CREATE INDEX idx_studies_orthanc_id ON studies (orthanc_id);
CREATE INDEX idx_studies_patient_date ON studies (patient_id, study_date DESC);
CREATE INDEX idx_studies_description_fts ON studies
    USING gin (to_tsvector('english', study_description));

CREATE TABLE series (
    id                   UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    series_instance_uid  VARCHAR(255) NOT NULL,
    study_id             UUID NOT NULL REFERENCES studies (id),
    series_number        INTEGER,
    series_description   TEXT,
    modality             VARCHAR(50),
    body_part_examined   VARCHAR(255),
    number_of_instances  INTEGER NOT NULL DEFAULT 0,
    orthanc_id           VARCHAR(255),
    metadata             JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at           TIMESTAMPTZ,
    CONSTRAINT series_series_instance_uid_key UNIQUE (series_instance_uid)
);
CREATE INDEX idx_series_study_id ON series (study_id);
CREATE INDEX idx_series_modality ON series (modality);
CREATE INDEX idx_series_orthanc_id ON series (orthanc_id);

CREATE TABLE instances (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    sop_instance_uid  VARCHAR(255) NOT NULL,
    series_id         UUID NOT NULL REFERENCES series (id),
    instance_number   INTEGER,
    acquisition_date  DATE,
    acquisition_time  TIME,
    orthanc_id        VARCHAR(255),
    storage_path      VARCHAR(500),
    file_size_bytes   BIGINT,
    metadata          JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at        TIMESTAMPTZ,
    CONSTRAINT instances_sop_instance_uid_key UNIQUE (sop_instance_uid)
);
CREATE INDEX idx_instances_series_id ON instances (series_id);
CREATE INDEX idx_instances_orthanc_id ON instances (orthanc_id);

CREATE TABLE slides (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    slide_id         VARCHAR(255) NOT NULL,
    patient_id       UUID REFERENCES patients (id),
    organization_id  UUID NOT NULL REFERENCES organizations (id),
    specimen_type    VARCHAR(100),
    stain            VARCHAR(100),
    magnification    VARCHAR(50),
    scan_date        TIMESTAMPTZ,
    scanner_model    VARCHAR(255),
    width_pixels     INTEGER CHECK (width_pixels > 0),
    height_pixels    INTEGER CHECK (height_pixels > 0),
    mpp_x            FLOAT CHECK (mpp_x > 0),
    mpp_y            FLOAT CHECK (mpp_y > 0),
    tile_size        INTEGER NOT NULL DEFAULT 256 CHECK (tile_size > 0),
    pyramid_levels   INTEGER CHECK (pyramid_levels > 0),
    storage_path     VARCHAR(500),
    file_size_bytes  BIGINT,
    file_format      VARCHAR(50),
    metadata         JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at       TIMESTAMPTZ,
    CONSTRAINT slides_slide_id_key UNIQUE (slide_id)
);
CREATE INDEX idx_slides_patient_id ON slides (patient_id);
CREATE INDEX idx_slides_organization_id ON slides (organization_id);
CREATE INDEX idx_slides_stain ON slides (stain);

CREATE TRIGGER patients_hash_patient_id BEFORE INSERT OR UPDATE OF patient_id ON patients
    FOR EACH ROW EXECUTE FUNCTION atrium_hash_patient_id();

CREATE TRIGGER organizations_updated_at BEFORE UPDATE ON organizations
    FOR EACH ROW EXECUTE FUNCTION atrium_set_updated_at();
CREATE TRIGGER users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION atrium_set_updated_at();
CREATE TRIGGER patients_updated_at BEFORE UPDATE ON patients
    FOR EACH ROW EXECUTE FUNCTION atrium_set_updated_at();
CREATE TRIGGER studies_updated_at BEFORE UPDATE ON studies
    FOR EACH ROW EXECUTE FUNCTION atrium_set_updated_at();
CREATE TRIGGER series_updated_at BEFORE UPDATE ON series
    FOR EACH ROW EXECUTE FUNCTION atrium_set_updated_at();
CREATE TRIGGER instances_updated_at BEFORE UPDATE ON instances
    FOR EACH ROW EXECUTE FUNCTION atrium_set_updated_at();
CREATE TRIGGER slides_updated_at BEFORE UPDATE ON slides
    FOR EACH ROW EXECUTE FUNCTION atrium_set_updated_at();
