"""QIDO-RS study search answered from the mirror first, so that it is scoped.

The DICOMweb plugin searches all of Orthanc. Atrium finds the page of studies the
caller may see — their organization's, de-identified only unless they may read PHI
— with the standard matching keys it evaluates in SQL, then asks the plugin for
exactly those studies (UID list matching), passing on only the keys it did not
evaluate and options such as ``includefield``. A key Atrium does not evaluate only
narrows the plugin's answer, never widens it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from atrium.errors import BadRequest

__all__ = ["StudyQuery", "paging_value", "parse_study_query", "split_uids", "wildcard_to_like"]

# Keys by keyword or by tag, as QIDO-RS allows both.
_KEY_ALIASES = {
    "0020000D": "StudyInstanceUID", "00100020": "PatientID", "00100010": "PatientName",
    "00080050": "AccessionNumber", "00080020": "StudyDate", "00080061": "ModalitiesInStudy",
    "00081030": "StudyDescription",
}
_PAGING = {"limit", "offset"}
_EVALUATED = frozenset(_KEY_ALIASES.values())
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_OFFSET = 10_000_000


def split_uids(value: str) -> list[str]:
    """A UID list as QIDO writes it: separated by ``,`` or ``\\``."""
    return [uid.strip() for uid in re.split(r"[,\\]", value) if uid.strip()]


def wildcard_to_like(value: str) -> str:
    """DICOM wildcard matching (``*``, ``?``) as a LIKE pattern with ``\\`` escapes."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _date(text: str) -> str:
    digits = text.strip().replace(".", "")
    if not re.fullmatch(r"\d{8}", digits):
        raise BadRequest("StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD",
                         errors=[{"in": "query", "field": "StudyDate",
                                  "message": "expected YYYYMMDD[-YYYYMMDD]"}])
    return f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"


def paging_value(name: str, raw: str | None, default: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer",
                         errors=[{"in": "query", "field": name, "message": "not an integer"}])
    return min(int(raw), high)


@dataclass(frozen=True)
class StudyQuery:
    """What SQL evaluates of a QIDO-RS study search, plus the rest for the plugin."""

    conditions: Sequence[sql.Composable]
    params: Mapping[str, Any]
    limit: int
    offset: int
    passthrough: Mapping[str, str]  # keys and options the plugin applies to the page


def parse_study_query(query: Mapping[str, str]) -> StudyQuery:
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {}
    passthrough: dict[str, str] = {}
    for raw_key, value in query.items():
        key = _KEY_ALIASES.get(raw_key.upper(), raw_key)
        if key in _PAGING:
            continue
        if key == "StudyInstanceUID":
            params["uids"] = split_uids(value)
            conditions.append(sql.SQL("s.study_instance_uid = ANY(%(uids)s)"))
        elif key == "PatientID" and value:
            params["mrn"] = wildcard_to_like(value)
            conditions.append(sql.SQL("p.patient_id LIKE %(mrn)s"))
        elif key == "AccessionNumber" and value:
            params["accession"] = wildcard_to_like(value)
            conditions.append(sql.SQL("s.accession_number LIKE %(accession)s"))
        elif key == "PatientName" and value:
            params["name"] = wildcard_to_like(value)
            conditions.append(sql.SQL("(p.metadata->>'PatientName') ILIKE %(name)s"))
        elif key == "StudyDescription" and value:
            params["description"] = wildcard_to_like(value)
            conditions.append(sql.SQL("s.study_description ILIKE %(description)s"))
        elif key == "StudyDate" and value:
            low, _, high = value.partition("-")
            if "-" not in value:
                high = low
            if low:
                params["date_from"] = _date(low)
                conditions.append(sql.SQL("s.study_date >= %(date_from)s::date"))
            if high:
                params["date_to"] = _date(high)
                conditions.append(sql.SQL("s.study_date <= %(date_to)s::date"))
        elif key == "ModalitiesInStudy" and value:
            params["modalities"] = split_uids(value)
            conditions.append(sql.SQL(
                "EXISTS (SELECT 1 FROM series se WHERE se.study_id = s.id "
                "AND se.deleted_at IS NULL AND se.modality = ANY(%(modalities)s))"))
        elif key in _EVALUATED and not value:
            pass  # an empty key matches everything (it only asks for the attribute)
        else:
            passthrough[raw_key] = value
    return StudyQuery(conditions, params,
                      limit=paging_value("limit", query.get("limit"), DEFAULT_LIMIT, MAX_LIMIT),
                      offset=paging_value("offset", query.get("offset"), 0, MAX_OFFSET),
                      passthrough=passthrough)


_PAGE = """
SELECT s.study_instance_uid, p.is_deidentified
FROM studies s JOIN patients p ON p.id = s.patient_id
WHERE s.organization_id = %(org)s AND s.deleted_at IS NULL AND p.deleted_at IS NULL
  AND (%(phi)s OR p.is_deidentified)
"""


def study_page_sql(query: StudyQuery, organization_id: uuid.UUID, can_read_phi: bool
                   ) -> tuple[sql.Composable, dict[str, Any]]:
    """The caller's page of studies, newest first: (uid, is_deidentified) rows."""
    where = sql.SQL("").join(sql.SQL(" AND ") + c for c in query.conditions)
    statement = sql.SQL(_PAGE) + where + sql.SQL(
        " ORDER BY s.study_date DESC NULLS LAST, s.id LIMIT %(limit)s OFFSET %(offset)s")
    return statement, {**query.params, "org": organization_id, "phi": can_read_phi,
                       "limit": query.limit, "offset": query.offset}
