-- Searches of the API at scale (GET /api/studies, GET /api/patients; bench/search.py).
--
-- A search pages newest first. PostgreSQL either walks idx_studies_org_created and
-- filters each study until the page is full, or finds the matches through another
-- index and sorts them; it walks whenever matches are not rare, which is right only
-- if the filter it applies to each study it passes is cheap. Two were not:
--
-- * The description words: to_tsvector() parsed each description again, about
--   3 µs a study, so two words matching 1% of 100,000 studies cost 15-20 ms. The
--   search vector is now stored with the study (the alternative to an expression
--   index that PostgreSQL's documentation gives), compared for next to nothing, and
--   has its own GIN index for rare words. Same configuration and text as the data
--   model's idx_studies_description_fts (which stays), so the same studies match.
--   An addition to the data model, like those of 0002.
-- * "A series of the study has this modality": the search probes
--   idx_series_study_modality for each study it passes (atrium.api.studies) instead
--   of hashing every live series of that modality before its first row.
--
-- And a birth-date range of patients read the whole table: no index had the date.
ALTER TABLE studies ADD COLUMN description_tsv tsvector
    GENERATED ALWAYS AS (to_tsvector('english', study_description)) STORED;
CREATE INDEX idx_studies_description_tsv ON studies USING gin (description_tsv)
    WHERE deleted_at IS NULL;
CREATE INDEX idx_series_study_modality ON series (study_id, modality) WHERE deleted_at IS NULL;
CREATE INDEX idx_patients_org_birth_date ON patients (organization_id, date_of_birth)
    WHERE deleted_at IS NULL;

-- Statistics for the new column now rather than at the next automatic ANALYZE: the
-- planner's choice between walking and sorting rests on them.
ANALYZE studies (description_tsv);
