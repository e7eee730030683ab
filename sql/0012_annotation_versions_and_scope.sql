-- Annotations and predictions, ready for the API: versions, scope and the viewport
-- query.
--
-- Versions. An annotation is a chain of rows: version 1 (its id is the
-- annotation's id for ever, kept in every version as root_id), then one row per
-- update whose parent_id is the row it replaced. Exactly one row of a chain is the
-- latest; the unique (root_id, version) stops two concurrent updates of the same
-- version from both succeeding, whatever the API does.
--
-- Scope. Annotations and predictions belong to their target's organization
-- (SPEC §7); the target is polymorphic, so the organization and the target's
-- patient are copied onto the row when it is written. Queries scope by them
-- without a join per target kind, and the patient tells whether the row is PHI
-- (an identified patient) and whether a researcher may see it.
--
-- Viewport. bbox is derived by the database from the server-computed
-- coordinates.bounding_box, so it can never disagree with it; a GiST index on
-- (target_id, bbox) over the live latest rows answers "the annotations of this
-- slide that intersect this rectangle" without touching other slides' rows.

CREATE EXTENSION IF NOT EXISTS btree_gist;

ALTER TABLE annotations
    ADD COLUMN root_id UUID,
    ADD COLUMN organization_id UUID REFERENCES organizations (id),
    ADD COLUMN patient_id UUID REFERENCES patients (id),
    ADD COLUMN is_latest BOOLEAN NOT NULL DEFAULT TRUE,
    ADD COLUMN bbox box GENERATED ALWAYS AS (
        CASE WHEN jsonb_typeof(coordinates -> 'bounding_box') = 'object' THEN
            box(point((coordinates #>> '{bounding_box,x}')::float8,
                      (coordinates #>> '{bounding_box,y}')::float8),
                point((coordinates #>> '{bounding_box,x}')::float8
                          + (coordinates #>> '{bounding_box,width}')::float8,
                      (coordinates #>> '{bounding_box,y}')::float8
                          + (coordinates #>> '{bounding_box,height}')::float8))
        END) STORED;

UPDATE annotations SET root_id = id WHERE root_id IS NULL;
ALTER TABLE annotations ALTER COLUMN root_id SET NOT NULL;

CREATE FUNCTION atrium_annotation_root() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.root_id IS NULL THEN
        NEW.root_id := NEW.id;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER annotations_root BEFORE INSERT ON annotations
    FOR EACH ROW EXECUTE FUNCTION atrium_annotation_root();

CREATE UNIQUE INDEX idx_annotations_root_version ON annotations (root_id, version);
CREATE UNIQUE INDEX idx_annotations_root_latest ON annotations (root_id) WHERE is_latest;
CREATE INDEX idx_annotations_viewport ON annotations USING gist (target_id, bbox)
    WHERE is_latest AND deleted_at IS NULL;
CREATE INDEX idx_annotations_organization_created ON annotations
    (organization_id, created_at, root_id) WHERE is_latest AND deleted_at IS NULL;
CREATE INDEX idx_annotations_target_created ON annotations
    (target_id, created_at, root_id) WHERE is_latest AND deleted_at IS NULL;
CREATE INDEX idx_annotations_label ON annotations (organization_id, label)
    WHERE is_latest AND deleted_at IS NULL;

ALTER TABLE predictions
    ADD COLUMN organization_id UUID REFERENCES organizations (id),
    ADD COLUMN patient_id UUID REFERENCES patients (id);
CREATE INDEX idx_predictions_organization_created ON predictions
    (organization_id, created_at DESC, id DESC);

-- The DICOM SRs Atrium has looked at: one row per SOP Instance UID, written in the
-- transaction that creates its annotations, so an SR is imported once however
-- often it arrives (a re-send, a replay of Orthanc's change log).
CREATE TABLE sr_imports (
    sop_instance_uid     VARCHAR(255) PRIMARY KEY,
    instance_id          UUID REFERENCES instances (id),
    outcome              VARCHAR(20) NOT NULL CHECK (outcome IN ('imported', 'ignored', 'failed')),
    annotations_created  INTEGER NOT NULL DEFAULT 0 CHECK (annotations_created >= 0),
    detail               TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The importer's question, "which SR instances are new?", reads only SR series.
CREATE INDEX idx_series_structured_reports ON series (id) WHERE modality = 'SR';
