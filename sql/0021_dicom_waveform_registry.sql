-- DICOM waveforms: what the registry (atrium/signals/waveform_registry.py) made of
-- each waveform instance (12-lead ECG, hemodynamic, EEG ...) the mirror holds.
--
-- waveform_instances. The registry looks at an instance whenever the mirror changes
-- its row (instances.updated_at moves with every real change: a file replaced, tags
-- completed, a soft delete, a return). It records the updated_at it looked at, a
-- SHA-256 of the file it read and the recordings it made, so a change that leaves
-- the file as it was costs one comparison, a file that failed is not read again
-- until it changes, and an instance that comes back gets its recordings (and the
-- annotations on them) back. recording_ids keeps the ids after the instance is gone
-- for that reason; recordings has no foreign key to point at (it is partitioned).
CREATE TABLE waveform_instances (
    instance_id          UUID PRIMARY KEY REFERENCES instances (id),
    sop_instance_uid     VARCHAR(255) NOT NULL,
    instance_updated_at  TIMESTAMPTZ NOT NULL,
    fingerprint          VARCHAR(64),
    outcome              VARCHAR(20) NOT NULL
        CHECK (outcome IN ('registered', 'failed', 'gone')),
    recording_ids        UUID[] NOT NULL DEFAULT '{}',
    detail               TEXT,
    attempts             INTEGER NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    checked_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_waveform_instances_sop_instance_uid ON waveform_instances (sop_instance_uid);

-- The registry's question, "which waveform instances changed?", reads only them
-- (Orthanc's SopClassUid metadata, kept by the mirror; the prefix of PS3.4's
-- waveform storage classes).
CREATE INDEX idx_instances_waveforms ON instances (updated_at)
    WHERE metadata #>> '{orthanc,SopClassUid}' LIKE '1.2.840.10008.5.1.4.1.1.9.%';
