"""The SQL of C-FIND and C-MOVE over the mirror, always inside one organization.

Each level reads its rows and its parents' (the answer needs their keys); counts and
ModalitiesInStudy are computed only when the identifier asks for them. A study's
``organization_id`` decides whom its series and instances belong to.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from atrium.dicomnet.matching import FindQuery

__all__ = ["FIND_SQL", "MOVE_SQL", "MoveIdentifiers", "find_statement", "move_statement"]

_PATIENT_COUNTS = frozenset({"NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                             "NumberOfPatientRelatedInstances"})

FIND_PATIENTS = """
SELECT p.is_deidentified, p.patient_id, p.metadata AS patient_metadata,
  CASE WHEN %(counts)s THEN (SELECT count(*) FROM studies c
       WHERE c.patient_id = p.id AND c.deleted_at IS NULL) END AS patient_studies,
  CASE WHEN %(counts)s THEN (SELECT coalesce(sum(c.number_of_series), 0) FROM studies c
       WHERE c.patient_id = p.id AND c.deleted_at IS NULL) END AS patient_series,
  CASE WHEN %(counts)s THEN (SELECT coalesce(sum(c.number_of_instances), 0) FROM studies c
       WHERE c.patient_id = p.id AND c.deleted_at IS NULL) END AS patient_instances
FROM patients p
WHERE p.organization_id = %(org)s AND p.deleted_at IS NULL
"""

FIND_STUDIES = """
SELECT p.is_deidentified, p.patient_id, p.metadata AS patient_metadata,
  s.study_instance_uid, s.metadata AS study_metadata,
  s.number_of_series, s.number_of_instances,
  CASE WHEN %(modalities)s THEN (SELECT string_agg(DISTINCT m.modality, '\\')
       FROM series m WHERE m.study_id = s.id AND m.deleted_at IS NULL) END
    AS modalities_in_study
FROM studies s JOIN patients p ON p.id = s.patient_id
WHERE s.organization_id = %(org)s AND s.deleted_at IS NULL AND p.deleted_at IS NULL
"""

FIND_SERIES = """
SELECT p.is_deidentified, p.patient_id, p.metadata AS patient_metadata,
  s.study_instance_uid, s.metadata AS study_metadata,
  se.series_instance_uid, se.metadata AS series_metadata,
  se.number_of_instances AS series_instances
FROM series se JOIN studies s ON s.id = se.study_id JOIN patients p ON p.id = s.patient_id
WHERE s.organization_id = %(org)s AND se.deleted_at IS NULL AND s.deleted_at IS NULL
  AND p.deleted_at IS NULL
"""

FIND_INSTANCES = """
SELECT p.is_deidentified, p.patient_id, p.metadata AS patient_metadata,
  s.study_instance_uid, s.metadata AS study_metadata,
  se.series_instance_uid, se.metadata AS series_metadata,
  i.sop_instance_uid, i.metadata->'tags' AS instance_tags
FROM instances i JOIN series se ON se.id = i.series_id JOIN studies s ON s.id = se.study_id
  JOIN patients p ON p.id = s.patient_id
WHERE s.organization_id = %(org)s AND i.deleted_at IS NULL AND se.deleted_at IS NULL
  AND s.deleted_at IS NULL AND p.deleted_at IS NULL
"""

FIND_SQL = {"PATIENT": FIND_PATIENTS, "STUDY": FIND_STUDIES, "SERIES": FIND_SERIES,
            "IMAGE": FIND_INSTANCES}


def find_statement(query: FindQuery, organization_id: uuid.UUID, limit: int
                   ) -> tuple[sql.Composable, dict[str, Any]]:
    """The rows answering ``query`` in the organization, at most ``limit``."""
    where = sql.SQL("").join(sql.SQL(" AND ") + c for c in query.conditions)
    statement = sql.SQL(FIND_SQL[query.level]) + where + sql.SQL(" LIMIT %(limit)s")
    asked = set(query.return_keys)
    params = {**query.params, "org": organization_id, "limit": limit,
              "counts": bool(asked & _PATIENT_COUNTS),
              "modalities": "ModalitiesInStudy" in asked}
    return statement, params


MOVE_SQL = """
SELECT i.orthanc_id, p.is_deidentified
FROM instances i JOIN series se ON se.id = i.series_id JOIN studies s ON s.id = se.study_id
  JOIN patients p ON p.id = s.patient_id
WHERE s.organization_id = %(org)s AND i.deleted_at IS NULL AND se.deleted_at IS NULL
  AND s.deleted_at IS NULL AND p.deleted_at IS NULL AND i.orthanc_id IS NOT NULL
"""

# identifier -> the column it constrains in MOVE_SQL
_MOVE_KEYS = {
    "PatientID": "p.patient_id",
    "AccessionNumber": "s.accession_number",
    "StudyInstanceUID": "s.study_instance_uid",
    "SeriesInstanceUID": "se.series_instance_uid",
    "SOPInstanceUID": "i.sop_instance_uid",
}
# the unique key a move of each level must carry (a study may also be named by
# its accession number, as Orthanc's own C-MOVE SCP allows)
_LEVEL_KEYS = {
    "PATIENT": ("PatientID",),
    "STUDY": ("StudyInstanceUID", "AccessionNumber"),
    "SERIES": ("SeriesInstanceUID",),
    "IMAGE": ("SOPInstanceUID",),
}
_MOST_SPECIFIC_FIRST = ("IMAGE", "SERIES", "STUDY", "PATIENT")


@dataclass(frozen=True)
class MoveIdentifiers:
    """What a C-MOVE names: its level (empty when the SCU gave none) and keys."""

    level: str
    keys: Mapping[str, str]

    def effective_level(self) -> str | None:
        """The level to move: the given one, else the most specific level whose unique
        key is present; None when the request names nothing it could move."""
        level = {"INSTANCE": "IMAGE"}.get(self.level.upper(), self.level.upper())
        if level in _LEVEL_KEYS:
            return level if any(self._values(k) for k in _LEVEL_KEYS[level]) else None
        if level:
            return None
        for candidate in _MOST_SPECIFIC_FIRST:
            if any(self._values(k) for k in _LEVEL_KEYS[candidate]):
                return candidate
        return None

    def _values(self, keyword: str) -> list[str]:
        raw = self.keys.get(keyword) or ""
        return [v.strip() for v in raw.split("\\") if v.strip() and "*" not in v
                and "?" not in v]


def move_statement(identifiers: MoveIdentifiers, organization_id: uuid.UUID
                   ) -> tuple[sql.Composable, dict[str, Any]] | None:
    """The instances of the organization that the move names, or None when it names
    nothing (a move never widens to "everything"). Every key given narrows."""
    if identifiers.effective_level() is None:
        return None
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {"org": organization_id}
    for keyword, column in _MOVE_KEYS.items():
        values = identifiers._values(keyword)
        if values:
            params[keyword] = values
            conditions.append(sql.SQL(" AND " + column + " = ANY({})").format(
                sql.Placeholder(keyword)))
    return sql.SQL(MOVE_SQL) + sql.SQL("").join(conditions), params
