-- Functions shared by the triggers of later migrations.

-- Every table with an updated_at column keeps it current on UPDATE.
CREATE OR REPLACE FUNCTION atrium_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

-- patients.patient_id_hash: SHA-256 (hex) of the MRN, so that records can be
-- matched across organizations and de-identified copies without revealing it.
CREATE OR REPLACE FUNCTION atrium_hash_patient_id() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.patient_id_hash := CASE WHEN NEW.patient_id IS NULL THEN NULL
        ELSE encode(sha256(convert_to(NEW.patient_id, 'UTF8')), 'hex') END;
    RETURN NEW;
END $$;
