-- Indexes for the research queries of docs/QUERIES.md that no existing index
-- serves (tests/integration/test_queries_doc.py checks each query's plan).
--
-- "Storage per organization" sums the live studies' instance counts and sizes per
-- organization. A studies row carries the DICOM tag JSON and the search vector,
-- so reading the table for three narrow columns reads many times the bytes this
-- index holds; with it, the sums are an index-only scan already in organization
-- order. Kept small: only live studies, only the two summed columns.
CREATE INDEX idx_studies_org_storage ON studies (organization_id)
    INCLUDE (number_of_instances, storage_size_bytes) WHERE deleted_at IS NULL;

-- "Predictions above a confidence" asks for one model's predictions over a
-- threshold, best first. The data model's indexes find a model's predictions
-- (model_id, and with created_at) but not those above a threshold: every
-- prediction of the model would be read to keep the few that pass. This one
-- reads only those, already in the order the query gives.
CREATE INDEX idx_predictions_model_confidence ON predictions (model_id, confidence DESC);
