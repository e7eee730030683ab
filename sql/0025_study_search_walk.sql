-- A search's walk newest first reads only its index (atrium.api.studies).
--
-- A search that filters as it walks idx_studies_org_created (or its de-identified
-- twin) fetched every study it passed from the table to test the filter: a study
-- row is wide (its tags, its words), so a search whose matches are one in a
-- hundred — two description words, a month of dates, a researcher's word and
-- modality that match nothing — read thousands of rows for one page (20 to 120 ms
-- at 120,000 studies). The walk indexes now carry every column a search filters
-- on, the search asks them for the page's ids alone (an index-only scan: the
-- filter runs on index entries), and only the page's rows are read. The indexes
-- keep their names; a list without filters walks them exactly as before.
DROP INDEX idx_studies_org_created;
CREATE INDEX idx_studies_org_created ON studies (organization_id, created_at DESC, id DESC)
    INCLUDE (study_date, modalities, description_tsv, patient_deleted, deidentified)
    WHERE deleted_at IS NULL;
DROP INDEX idx_studies_org_created_deidentified;
CREATE INDEX idx_studies_org_created_deidentified ON studies
    (organization_id, created_at DESC, id DESC)
    INCLUDE (study_date, modalities, description_tsv, patient_deleted)
    WHERE deleted_at IS NULL AND deidentified;
