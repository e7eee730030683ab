-- What a study list filters on, on the study itself (GET /api/studies; bench/search.py).
--
-- Two of the search's conditions read other tables for each study the search
-- passes, so no index of studies could serve them, and a search that combined
-- them with a rare filter walked the whole organization:
--
-- * "a series of the study has this modality" probed series for each study;
-- * a caller without READ_PHI sees studies of de-identified patients only, which
--   joined patients for each study.
--
-- Both are now derived columns of studies, kept by the triggers below in the
-- transaction that changes what they derive from (the mirror's upserts and soft
-- deletions, the patients API, anything else): they cannot drift from it.
--
-- * modalities: the study's own modality and those of its live series, distinct
--   and sorted (ModalitiesInStudy, plus the study-level tag the search has always
--   matched too). Empty, never NULL.
-- * deidentified: its patient's is_deidentified;
-- * patient_deleted: its patient is soft-deleted (deleted_at set). Every caller's
--   scope excludes such studies; the mirror never leaves a live study under a
--   deleted patient, but the search keeps the rule exactly without reading patients.
--
-- Additions to the data model, like those of 0002 and 0011 (docs/DATABASE.md).

ALTER TABLE studies
    ADD COLUMN modalities text[] NOT NULL DEFAULT '{}',
    ADD COLUMN deidentified boolean NOT NULL DEFAULT false,
    ADD COLUMN patient_deleted boolean NOT NULL DEFAULT false;

-- The modalities of a study from its own and its live series' (NULLs and empty
-- strings left out).
CREATE FUNCTION atrium_study_modalities(study uuid, own text) RETURNS text[]
    LANGUAGE sql STABLE AS $$
    SELECT COALESCE(array_agg(m ORDER BY m), '{}')
    FROM (SELECT NULLIF(own, '') AS m
          UNION
          SELECT NULLIF(modality, '') FROM series
          WHERE study_id = study AND deleted_at IS NULL) found
    WHERE m IS NOT NULL
$$;

-- A study row written: its derived columns from what they derive from, whatever the
-- writer put there.
CREATE FUNCTION atrium_study_derive() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.modalities := atrium_study_modalities(NEW.id, NEW.modality);
    SELECT COALESCE(p.is_deidentified, false), p.deleted_at IS NOT NULL
    INTO NEW.deidentified, NEW.patient_deleted
    FROM patients p WHERE p.id = NEW.patient_id;
    RETURN NEW;
END $$;

CREATE TRIGGER studies_derive_insert BEFORE INSERT ON studies
    FOR EACH ROW EXECUTE FUNCTION atrium_study_derive();
-- The mirror's upsert sets every column of a study again on each batch: only a real
-- change of a source (or a write of a derived column) re-derives.
CREATE TRIGGER studies_derive_update BEFORE UPDATE ON studies
    FOR EACH ROW WHEN (OLD.modality IS DISTINCT FROM NEW.modality
                       OR OLD.patient_id IS DISTINCT FROM NEW.patient_id
                       OR OLD.modalities IS DISTINCT FROM NEW.modalities
                       OR OLD.deidentified IS DISTINCT FROM NEW.deidentified
                       OR OLD.patient_deleted IS DISTINCT FROM NEW.patient_deleted)
    EXECUTE FUNCTION atrium_study_derive();

-- A series arrived, moved, changed modality, was soft-deleted, revived or deleted:
-- its study's (studies') modalities again. One index probe of
-- idx_series_study_modality per study, and a write only if the set changed.
CREATE FUNCTION atrium_series_modalities() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        UPDATE studies SET modalities = atrium_study_modalities(id, modality)
        WHERE id = OLD.study_id
          AND modalities IS DISTINCT FROM atrium_study_modalities(id, modality);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.study_id IS DISTINCT FROM OLD.study_id)
    THEN
        UPDATE studies SET modalities = atrium_study_modalities(id, modality)
        WHERE id = NEW.study_id
          AND modalities IS DISTINCT FROM atrium_study_modalities(id, modality);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER series_modalities_insert_delete AFTER INSERT OR DELETE ON series
    FOR EACH ROW EXECUTE FUNCTION atrium_series_modalities();
CREATE TRIGGER series_modalities_update AFTER UPDATE ON series
    FOR EACH ROW WHEN (OLD.modality IS DISTINCT FROM NEW.modality
                       OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at
                       OR OLD.study_id IS DISTINCT FROM NEW.study_id)
    EXECUTE FUNCTION atrium_series_modalities();

-- A patient de-identified or re-identified, deleted or revived (PATCH and DELETE
-- /api/patients, the mirror): their studies follow (idx_studies_patient_id).
CREATE FUNCTION atrium_patient_to_studies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE studies SET deidentified = NEW.is_deidentified,
                       patient_deleted = NEW.deleted_at IS NOT NULL
    WHERE patient_id = NEW.id
      AND (deidentified, patient_deleted)
          IS DISTINCT FROM (NEW.is_deidentified, NEW.deleted_at IS NOT NULL);
    RETURN NULL;
END $$;

CREATE TRIGGER patients_to_studies AFTER UPDATE ON patients
    FOR EACH ROW WHEN (OLD.is_deidentified IS DISTINCT FROM NEW.is_deidentified
                       OR (OLD.deleted_at IS NULL) <> (NEW.deleted_at IS NULL))
    EXECUTE FUNCTION atrium_patient_to_studies();

-- Backfill, in one pass over studies (not the trigger, one study at a time).
ALTER TABLE studies DISABLE TRIGGER studies_derive_update;
ALTER TABLE studies DISABLE TRIGGER studies_updated_at;
UPDATE studies st SET modalities = d.modalities, deidentified = d.deidentified,
                      patient_deleted = d.patient_deleted
FROM (SELECT s.id,
             COALESCE(array_agg(DISTINCT m.m ORDER BY m.m) FILTER (WHERE m.m IS NOT NULL),
                      '{}') AS modalities,
             bool_or(p.is_deidentified) AS deidentified,
             bool_or(p.deleted_at IS NOT NULL) AS patient_deleted
      FROM studies s JOIN patients p ON p.id = s.patient_id
      LEFT JOIN LATERAL (SELECT NULLIF(s.modality, '') AS m
                         UNION
                         SELECT NULLIF(se.modality, '') FROM series se
                         WHERE se.study_id = s.id AND se.deleted_at IS NULL) m ON true
      GROUP BY s.id) d
WHERE st.id = d.id;
ALTER TABLE studies ENABLE TRIGGER studies_updated_at;
ALTER TABLE studies ENABLE TRIGGER studies_derive_update;

-- The paths of a search (atrium.api.studies). Every one pages newest first, so
-- PostgreSQL either walks an index in that order and filters each study it passes
-- (matches are common) or collects the matches through another index and sorts
-- them (matches are rare); every condition is now a column of studies, so either
-- way no other table is read until the page is known.
--
-- * idx_studies_org_created (0009) is the walk of a caller who may read PHI, and
--   idx_studies_org_created_deidentified that of one who may not: a researcher's
--   search no longer passes the four studies in five they may not see.
-- * idx_studies_search finds description words and a modality, alone or together
--   (one bitmap of the same index): it replaces 0011's index of the words alone.
-- * Dates, accession numbers, UIDs and patients keep the data model's indexes.
CREATE INDEX idx_studies_org_created_deidentified ON studies
    (organization_id, created_at DESC, id DESC) WHERE deleted_at IS NULL AND deidentified;
CREATE INDEX idx_studies_search ON studies USING gin (description_tsv, modalities)
    WHERE deleted_at IS NULL;
DROP INDEX idx_studies_description_tsv;

ANALYZE studies;
