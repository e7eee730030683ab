-- Lists of the API page by keyset, newest first, within one organization
-- (atrium.api.pagination): these indexes answer "WHERE organization_id = $1 AND
-- deleted_at IS NULL AND (created_at, id) < ($2, $3) ORDER BY created_at DESC,
-- id DESC LIMIT n" without sorting, however deep the page. Filters and full-text
-- search keep using the data model's own indexes (idx_patients_name_fts,
-- idx_studies_description_fts, ...).
CREATE INDEX idx_patients_org_created ON patients (organization_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX idx_studies_org_created ON studies (organization_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX idx_jobs_org_created ON jobs (organization_id, created_at DESC, id DESC);
-- The instances of a series in instance-number order (GET /api/series/{id}/instances).
CREATE INDEX idx_instances_series_number ON instances
    (series_id, (COALESCE(instance_number, 2147483647)), id) WHERE deleted_at IS NULL;
