"""Batched, idempotent writes of the mirror into PostgreSQL.

One batch is one transaction of a handful of set-based statements, whatever its
size: organizations, patients, studies, series and instances are upserted from a
single JSON parameter each (``jsonb_to_recordset``), then the counts of every
touched series and study are recomputed from their live children, and the
change-log cursor is advanced in the same transaction — so the cursor never runs
ahead of the rows, and applying a batch twice changes nothing.

Rows are upserted in UID order: two Atrium processes sharing one database (Orthanc
scaled out) lock the same study rows in the same order and cannot deadlock; the
second waits for the first and then counts its rows too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from atrium.mirror.extract import InstanceRecord

log = logging.getLogger(__name__)

__all__ = ["CURSOR_NAME", "MirrorWriter"]

CURSOR_NAME = "orthanc"

_ENSURE_ORGANIZATIONS = """
INSERT INTO organizations (name) SELECT unnest(%(names)s::text[])
ON CONFLICT (name) DO NOTHING
"""

_ORGANIZATION_IDS = "SELECT name, id FROM organizations WHERE name = ANY(%(names)s::text[])"

# A study keeps the organization it first arrived in: a later copy from another
# sender does not move it (nor its patient) to another organization. A study not
# yet mirrored goes where an upload assigned it (study_assignments), if anywhere.
_EXISTING_STUDY_ORGANIZATIONS = """
SELECT s.study_instance_uid, o.name FROM studies s JOIN organizations o ON o.id = s.organization_id
WHERE s.study_instance_uid = ANY(%(uids)s::text[])
UNION ALL
SELECT a.study_instance_uid, o.name FROM study_assignments a
JOIN organizations o ON o.id = a.organization_id
WHERE a.study_instance_uid = ANY(%(uids)s::text[])
  AND NOT EXISTS (SELECT 1 FROM studies s WHERE s.study_instance_uid = a.study_instance_uid)
"""

_UPSERT_PATIENTS = """
INSERT INTO patients (organization_id, patient_id, orthanc_id, first_name, last_name,
                      date_of_birth, sex, metadata, is_deidentified)
SELECT r.organization_id, r.mrn, r.patient_orthanc_id, r.first_name, r.last_name,
       r.date_of_birth, r.sex, r.patient_metadata, r.is_deidentified
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
    organization_id uuid, mrn text, patient_orthanc_id text, first_name text, last_name text,
    date_of_birth date, sex text, patient_metadata jsonb, is_deidentified boolean)
ORDER BY r.organization_id, r.mrn
ON CONFLICT (organization_id, patient_id) DO UPDATE SET
    orthanc_id = EXCLUDED.orthanc_id,
    first_name = EXCLUDED.first_name,
    last_name = EXCLUDED.last_name,
    date_of_birth = EXCLUDED.date_of_birth,
    sex = EXCLUDED.sex,
    metadata = patients.metadata || EXCLUDED.metadata,
    is_deidentified = EXCLUDED.is_deidentified,
    deleted_at = NULL
WHERE (patients.orthanc_id, patients.first_name, patients.last_name, patients.date_of_birth,
       patients.sex, patients.is_deidentified, patients.deleted_at)
  IS DISTINCT FROM (EXCLUDED.orthanc_id, EXCLUDED.first_name, EXCLUDED.last_name,
       EXCLUDED.date_of_birth, EXCLUDED.sex, EXCLUDED.is_deidentified, NULL::timestamptz)
   OR NOT patients.metadata @> EXCLUDED.metadata
"""

_UPSERT_STUDIES = """
INSERT INTO studies (study_instance_uid, patient_id, organization_id, accession_number,
                     study_date, study_time, study_description, modality, referring_physician,
                     orthanc_id, storage_location, metadata)
SELECT r.study_instance_uid, p.id, r.organization_id, r.accession_number, r.study_date,
       r.study_time, r.study_description, r.study_modality, r.referring_physician,
       r.study_orthanc_id, 'orthanc://studies/' || r.study_orthanc_id, r.study_metadata
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
    study_instance_uid text, organization_id uuid, mrn text, accession_number text,
    study_date date, study_time time, study_description text, study_modality text,
    referring_physician text, study_orthanc_id text, study_metadata jsonb)
JOIN patients p ON p.organization_id = r.organization_id AND p.patient_id = r.mrn
ORDER BY r.study_instance_uid
ON CONFLICT (study_instance_uid) DO UPDATE SET
    accession_number = EXCLUDED.accession_number,
    study_date = EXCLUDED.study_date,
    study_time = EXCLUDED.study_time,
    study_description = EXCLUDED.study_description,
    modality = COALESCE(studies.modality, EXCLUDED.modality),
    referring_physician = EXCLUDED.referring_physician,
    orthanc_id = EXCLUDED.orthanc_id,
    storage_location = EXCLUDED.storage_location,
    metadata = studies.metadata || EXCLUDED.metadata,
    deleted_at = NULL
"""

_UPSERT_SERIES = """
INSERT INTO series (series_instance_uid, study_id, series_number, series_description, modality,
                    body_part_examined, orthanc_id, metadata)
SELECT r.series_instance_uid, s.id, r.series_number, r.series_description, r.series_modality,
       r.body_part_examined, r.series_orthanc_id, r.series_metadata
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
    series_instance_uid text, study_instance_uid text, series_number integer,
    series_description text, series_modality text, body_part_examined text,
    series_orthanc_id text, series_metadata jsonb)
JOIN studies s ON s.study_instance_uid = r.study_instance_uid
ORDER BY r.series_instance_uid
ON CONFLICT (series_instance_uid) DO UPDATE SET
    series_number = EXCLUDED.series_number,
    series_description = EXCLUDED.series_description,
    modality = EXCLUDED.modality,
    body_part_examined = EXCLUDED.body_part_examined,
    orthanc_id = EXCLUDED.orthanc_id,
    metadata = series.metadata || EXCLUDED.metadata,
    deleted_at = NULL
RETURNING id, study_id
"""

# An instance whose whole header is already mirrored keeps it when the same file
# comes again with the index's tags only (a replay of the change log): the header
# cannot have changed while Orthanc's id and the file size stay the same.
_UPSERT_INSTANCES = """
INSERT INTO instances (sop_instance_uid, series_id, instance_number, acquisition_date,
                       acquisition_time, orthanc_id, storage_path, file_size_bytes, metadata)
SELECT r.sop_instance_uid, se.id, r.instance_number,
       CASE WHEN k.keep THEN old.acquisition_date ELSE r.acquisition_date END,
       CASE WHEN k.keep THEN old.acquisition_time ELSE r.acquisition_time END,
       r.instance_orthanc_id, r.storage_path, r.file_size_bytes,
       CASE WHEN k.keep
            THEN jsonb_set(old.metadata, '{orthanc}', r.instance_metadata->'orthanc')
            ELSE r.instance_metadata END
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
    sop_instance_uid text, series_instance_uid text, instance_number integer,
    acquisition_date date, acquisition_time time, instance_orthanc_id text,
    storage_path text, file_size_bytes bigint, instance_metadata jsonb)
JOIN series se ON se.series_instance_uid = r.series_instance_uid
LEFT JOIN instances old ON old.sop_instance_uid = r.sop_instance_uid
CROSS JOIN LATERAL (SELECT r.instance_metadata->>'tags_source' = 'index'
                           AND old.metadata->>'tags_source' = 'file'
                           AND old.orthanc_id = r.instance_orthanc_id
                           AND old.file_size_bytes = r.file_size_bytes AS keep) k
ORDER BY r.sop_instance_uid
ON CONFLICT (sop_instance_uid) DO UPDATE SET
    series_id = EXCLUDED.series_id,
    instance_number = EXCLUDED.instance_number,
    acquisition_date = EXCLUDED.acquisition_date,
    acquisition_time = EXCLUDED.acquisition_time,
    orthanc_id = EXCLUDED.orthanc_id,
    storage_path = EXCLUDED.storage_path,
    file_size_bytes = EXCLUDED.file_size_bytes,
    metadata = EXCLUDED.metadata,
    deleted_at = NULL
WHERE (instances.series_id, instances.orthanc_id, instances.file_size_bytes,
       instances.deleted_at, instances.metadata)
  IS DISTINCT FROM (EXCLUDED.series_id, EXCLUDED.orthanc_id, EXCLUDED.file_size_bytes,
       NULL::timestamptz, EXCLUDED.metadata)
"""

# Live instances whose metadata holds only the index's tags, in id order from a
# sweep position (partial index idx_instances_tags_from_index).
_INSTANCES_WITH_INDEX_TAGS = """
SELECT id, orthanc_id FROM instances
WHERE metadata->>'tags_source' = 'index' AND deleted_at IS NULL
  AND (%(after)s::uuid IS NULL OR id > %(after)s::uuid)
ORDER BY id LIMIT %(limit)s
"""

_RECOUNT_SERIES = """
UPDATE series se SET number_of_instances = c.n
FROM (SELECT se2.id, count(i.id) AS n FROM series se2
      LEFT JOIN instances i ON i.series_id = se2.id AND i.deleted_at IS NULL
      WHERE se2.id = ANY(%(ids)s::uuid[]) GROUP BY se2.id) c
WHERE se.id = c.id AND se.number_of_instances IS DISTINCT FROM c.n
"""

_RECOUNT_STUDIES = """
UPDATE studies st SET number_of_series = c.n_series, number_of_instances = c.n_instances,
                      storage_size_bytes = c.size
FROM (SELECT st2.id,
             count(DISTINCT se.id) FILTER (WHERE se.deleted_at IS NULL) AS n_series,
             count(i.id) FILTER (WHERE i.deleted_at IS NULL AND se.deleted_at IS NULL)
                 AS n_instances,
             COALESCE(sum(i.file_size_bytes)
                 FILTER (WHERE i.deleted_at IS NULL AND se.deleted_at IS NULL), 0) AS size
      FROM studies st2
      LEFT JOIN series se ON se.study_id = st2.id
      LEFT JOIN instances i ON i.series_id = se.id
      WHERE st2.id = ANY(%(ids)s::uuid[]) GROUP BY st2.id) c
WHERE st.id = c.id AND (st.number_of_series, st.number_of_instances, st.storage_size_bytes)
      IS DISTINCT FROM (c.n_series, c.n_instances, c.size)
"""

_ADVANCE_CURSOR = """
INSERT INTO mirror_state (name, last_seq) VALUES (%(name)s, %(seq)s)
ON CONFLICT (name) DO UPDATE SET last_seq = GREATEST(mirror_state.last_seq, EXCLUDED.last_seq),
                                 updated_at = now()
"""

# Soft deletion, one statement per level; each cascades to the levels below and
# returns the parents whose counts must be recomputed.
_SOFT_DELETE = {
    "Instance": """
        UPDATE instances SET deleted_at = now()
        WHERE orthanc_id = ANY(%(ids)s::text[]) AND deleted_at IS NULL
        RETURNING series_id AS series_id
    """,
    "Series": """
        WITH gone AS (
            UPDATE series SET deleted_at = now()
            WHERE orthanc_id = ANY(%(ids)s::text[]) AND deleted_at IS NULL RETURNING id
        ), gone_instances AS (
            UPDATE instances SET deleted_at = now()
            WHERE series_id IN (SELECT id FROM gone) AND deleted_at IS NULL
        )
        SELECT id AS series_id FROM gone
    """,
    "Study": """
        WITH gone AS (
            UPDATE studies SET deleted_at = now()
            WHERE orthanc_id = ANY(%(ids)s::text[]) AND deleted_at IS NULL RETURNING id
        ), gone_series AS (
            UPDATE series SET deleted_at = now()
            WHERE study_id IN (SELECT id FROM gone) AND deleted_at IS NULL RETURNING id
        ), gone_instances AS (
            UPDATE instances SET deleted_at = now()
            WHERE series_id IN (SELECT id FROM gone_series) AND deleted_at IS NULL
        )
        SELECT id AS series_id FROM gone_series
    """,
    "Patient": """
        WITH gone AS (
            UPDATE patients SET deleted_at = now()
            WHERE orthanc_id = ANY(%(ids)s::text[]) AND deleted_at IS NULL RETURNING id
        ), gone_studies AS (
            UPDATE studies SET deleted_at = now()
            WHERE patient_id IN (SELECT id FROM gone) AND deleted_at IS NULL RETURNING id
        ), gone_series AS (
            UPDATE series SET deleted_at = now()
            WHERE study_id IN (SELECT id FROM gone_studies) AND deleted_at IS NULL RETURNING id
        ), gone_instances AS (
            UPDATE instances SET deleted_at = now()
            WHERE series_id IN (SELECT id FROM gone_series) AND deleted_at IS NULL
        )
        SELECT id AS series_id FROM gone_series
    """,
}

LEVELS = tuple(_SOFT_DELETE)


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(InstanceRecord))


def _row(record: InstanceRecord, organization_id: str) -> dict[str, Any]:
    # A shallow copy: dataclasses.asdict deep-copies every tag of the metadata and
    # cost more than the rest of turning an instance into rows.
    row = {name: getattr(record, name) for name in _RECORD_FIELDS}
    row["organization_id"] = organization_id
    for key, value in row.items():
        if hasattr(value, "isoformat"):
            row[key] = value.isoformat()
    return row


def _last_by(rows: Iterable[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """One row per key (the last wins), sorted by key: a statement may not upsert
    the same row twice, and a stable order keeps concurrent writers deadlock-free."""
    unique = {tuple(str(row[k]) for k in keys): row for row in rows}
    return [unique[k] for k in sorted(unique)]


class MirrorWriter:
    """Writes batches of :class:`InstanceRecord` and deletions into the mirror."""

    def __init__(self, connect: Any) -> None:
        """``connect``: a callable returning a context manager that yields a psycopg
        connection (``pool.connection`` or a wrapper around ``psycopg.connect``)."""
        self._connect = connect

    def apply(self, records: Sequence[InstanceRecord], cursor_seq: int | None = None) -> int:
        """Upsert ``records`` and advance the change-log cursor to ``cursor_seq``, in one
        transaction. Returns the number of instances written."""
        with self._connect() as conn, conn.transaction():
            if records:
                self._upsert(conn, records)
            if cursor_seq is not None:
                conn.execute(_ADVANCE_CURSOR, {"name": CURSOR_NAME, "seq": cursor_seq})
        return len(records)

    def _upsert(self, conn: psycopg.Connection[Any], records: Sequence[InstanceRecord]) -> None:
        names = sorted({r.organization for r in records})
        conn.execute(_ENSURE_ORGANIZATIONS, {"names": names})
        org_ids = dict(conn.execute(_ORGANIZATION_IDS, {"names": names}).fetchall())
        owners = dict(conn.execute(
            _EXISTING_STUDY_ORGANIZATIONS,
            {"uids": sorted({r.study_instance_uid for r in records})},
        ).fetchall())
        if owners:
            records = [
                dataclasses.replace(r, organization=owners.get(r.study_instance_uid,
                                                               r.organization))
                for r in records
            ]
            missing = sorted({r.organization for r in records} - set(org_ids))
            if missing:
                org_ids.update(conn.execute(_ORGANIZATION_IDS, {"names": missing}).fetchall())
        rows = [_row(r, str(org_ids[r.organization])) for r in records]
        conn.execute(_UPSERT_PATIENTS, {"rows": Jsonb(_last_by(rows, "organization_id", "mrn"))})
        conn.execute(_UPSERT_STUDIES, {"rows": Jsonb(_last_by(rows, "study_instance_uid"))})
        series = conn.execute(
            _UPSERT_SERIES, {"rows": Jsonb(_last_by(rows, "series_instance_uid"))}).fetchall()
        conn.execute(_UPSERT_INSTANCES, {"rows": Jsonb(_last_by(rows, "sop_instance_uid"))})
        self._recount(conn, [sid for sid, _ in series], [stid for _, stid in series])

    @staticmethod
    def _recount(conn: psycopg.Connection[Any], series_ids: list[Any],
                 study_ids: list[Any] | None = None) -> None:
        if not series_ids and not study_ids:
            return
        conn.execute(_RECOUNT_SERIES, {"ids": sorted(set(series_ids))})
        if study_ids is None:
            study_ids = [row[0] for row in conn.execute(
                "SELECT DISTINCT study_id FROM series WHERE id = ANY(%(ids)s::uuid[])",
                {"ids": series_ids}).fetchall()]
        conn.execute(_RECOUNT_STUDIES, {"ids": sorted(set(study_ids))})

    def soft_delete(self, level: str, orthanc_ids: Sequence[str]) -> int:
        """Mark the resources of ``level`` ('Patient', 'Study', 'Series', 'Instance')
        with these Orthanc ids, and everything below them, deleted. Returns the number
        of series touched."""
        if level not in _SOFT_DELETE:
            raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
        if not orthanc_ids:
            return 0
        with self._connect() as conn, conn.transaction():
            touched = [row[0] for row in conn.execute(
                _SOFT_DELETE[level], {"ids": sorted(set(orthanc_ids))}).fetchall()]
            self._recount(conn, touched)
        return len(touched)

    def recount_by_orthanc_ids(self, orthanc_ids: Sequence[str]) -> None:
        """Recompute the counts of these series or studies (by Orthanc id)."""
        with self._connect() as conn, conn.transaction():
            series_ids = [row[0] for row in conn.execute(
                "SELECT se.id FROM series se JOIN studies st ON st.id = se.study_id "
                "WHERE se.orthanc_id = ANY(%(ids)s) OR st.orthanc_id = ANY(%(ids)s)",
                {"ids": list(orthanc_ids)}).fetchall()]
            self._recount(conn, series_ids)

    def instances_with_index_tags(self, after: Any, limit: int) -> list[tuple[Any, str]]:
        """(id, Orthanc id) of live instances still lacking their whole header, after
        id ``after`` (None: from the start)."""
        with self._connect() as conn:
            return [(row[0], row[1]) for row in conn.execute(
                _INSTANCES_WITH_INDEX_TAGS, {"after": after, "limit": limit}).fetchall()]

    def cursor(self) -> int:
        with self._connect() as conn:
            row = conn.execute("SELECT last_seq FROM mirror_state WHERE name = %s",
                               (CURSOR_NAME,)).fetchone()
        return int(row[0]) if row else 0
