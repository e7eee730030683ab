-- Annotations (versioned through parent_id), the ML model registry and predictions.
-- target_id is polymorphic (study, series, instance, slide, recording): the API
-- checks that the target exists in the caller's organization.

CREATE TABLE annotations (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    annotation_type  VARCHAR(50) NOT NULL CHECK (annotation_type IN ('dicom', 'wsi', 'signal', 'general')),
    target_id        UUID NOT NULL,
    target_type      VARCHAR(50) NOT NULL,
    user_id          UUID REFERENCES users (id),
    label            VARCHAR(255),
    coordinates      JSONB,
    properties       JSONB NOT NULL DEFAULT '{}'::jsonb,
    version          INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    parent_id        UUID REFERENCES annotations (id),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at       TIMESTAMPTZ
);
CREATE INDEX idx_annotations_target ON annotations (target_id, target_type);
CREATE INDEX idx_annotations_user_id ON annotations (user_id);
CREATE INDEX idx_annotations_annotation_type ON annotations (annotation_type);
CREATE INDEX idx_annotations_parent_id ON annotations (parent_id);

CREATE TABLE ml_models (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    model_name     VARCHAR(255) NOT NULL,
    model_version  VARCHAR(50) NOT NULL,
    model_type     VARCHAR(100) NOT NULL
        CHECK (model_type IN ('classification', 'segmentation', 'detection', 'regression', 'generation')),
    framework      VARCHAR(50),
    mlflow_run_id  VARCHAR(255),
    storage_path   VARCHAR(500),
    input_schema   JSONB,
    output_schema  JSONB,
    metrics        JSONB NOT NULL DEFAULT '{}'::jsonb,
    status         VARCHAR(50) NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'deprecated', 'archived')),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT ml_models_model_name_model_version_key UNIQUE (model_name, model_version)
);
CREATE INDEX idx_ml_models_model_name ON ml_models (model_name);
CREATE INDEX idx_ml_models_model_type ON ml_models (model_type);
CREATE INDEX idx_active_models ON ml_models (model_name) WHERE status = 'active';

CREATE TABLE predictions (
    id                 UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    model_id           UUID NOT NULL REFERENCES ml_models (id),
    target_id          UUID NOT NULL,
    target_type        VARCHAR(50) NOT NULL,
    user_id            UUID REFERENCES users (id),
    prediction_type    VARCHAR(50),
    results            JSONB NOT NULL DEFAULT '{}'::jsonb,
    confidence         FLOAT CHECK (confidence >= 0 AND confidence <= 1),
    inference_time_ms  INTEGER CHECK (inference_time_ms >= 0),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_predictions_model_id ON predictions (model_id);
CREATE INDEX idx_predictions_target ON predictions (target_id, target_type);
CREATE INDEX idx_predictions_created_at ON predictions (created_at DESC);
CREATE INDEX idx_predictions_model_created ON predictions (model_id, created_at DESC);

CREATE TRIGGER annotations_updated_at BEFORE UPDATE ON annotations
    FOR EACH ROW EXECUTE FUNCTION atrium_set_updated_at();
CREATE TRIGGER ml_models_updated_at BEFORE UPDATE ON ml_models
    FOR EACH ROW EXECUTE FUNCTION atrium_set_updated_at();
