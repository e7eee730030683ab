-- DICOM whole-slide images: what the registry made of each microscopy series, and
-- the Microscopy Bulk Simple Annotations it imported.
--
-- wsi_series. The registry (atrium/slides/wsi_registry.py) looks at a series of
-- modality SM whenever the mirror changes its row (series.updated_at moves with
-- every batch that touches the series, and with its deletion). It records the
-- updated_at it looked at and a fingerprint of the series' live instances, so a
-- change that leaves the instances as they were (the mirror completing tags) costs
-- one comparison, and a series that was refused is not looked at again until it
-- changes.
CREATE TABLE wsi_series (
    series_id            UUID PRIMARY KEY REFERENCES series (id),
    series_instance_uid  VARCHAR(255) NOT NULL,
    series_updated_at    TIMESTAMPTZ NOT NULL,
    fingerprint          VARCHAR(64),
    outcome              VARCHAR(20) NOT NULL
        CHECK (outcome IN ('slide', 'refused', 'ignored', 'failed', 'gone')),
    slide_id             UUID REFERENCES slides (id),
    detail               TEXT,
    checked_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_wsi_series_slide_id ON wsi_series (slide_id);

-- The registry's question, "which microscopy series changed?", reads only them.
CREATE INDEX idx_series_microscopy ON series (updated_at) WHERE modality = 'SM';

-- The bulk annotation objects Atrium has looked at: one row per SOP Instance UID,
-- written in the transaction that creates its annotations (as sr_imports).
CREATE TABLE ann_imports (
    sop_instance_uid     VARCHAR(255) PRIMARY KEY,
    instance_id          UUID REFERENCES instances (id),
    slide_id             UUID REFERENCES slides (id),
    outcome              VARCHAR(20) NOT NULL CHECK (outcome IN ('imported', 'ignored', 'failed')),
    annotations_created  INTEGER NOT NULL DEFAULT 0 CHECK (annotations_created >= 0),
    detail               TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_series_bulk_annotations ON series (id) WHERE modality = 'ANN';
