"""QIDO-RS searches answered from the mirror first, so that they are scoped.

The DICOMweb plugin searches all of Orthanc. Atrium finds the page of studies,
series or instances the caller may see — their organization's, of de-identified
patients only unless they may read PHI — with the standard matching keys it
evaluates in SQL, then asks the plugin for exactly those items (UID list
matching), passing on only the keys it did not evaluate and options such as
``includefield``. A key Atrium does not evaluate only narrows the plugin's answer,
never widens it; and the plugin's work is bounded by the page, not by the size of
Orthanc (nor cut short by a ``LimitFindResults`` of Orthanc's).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from atrium.errors import BadRequest

__all__ = ["INSTANCES", "LEVELS", "SERIES", "STUDIES", "Level", "QidoQuery", "page_sql",
           "paging_value", "parse_query", "split_uids", "wildcard_to_like"]

# Keys by keyword or by tag, as QIDO-RS allows both.
_KEY_ALIASES = {
    "0020000D": "StudyInstanceUID", "00100020": "PatientID", "00100010": "PatientName",
    "00080050": "AccessionNumber", "00080020": "StudyDate", "00080061": "ModalitiesInStudy",
    "00081030": "StudyDescription", "0020000E": "SeriesInstanceUID", "00080060": "Modality",
    "00200011": "SeriesNumber", "00080018": "SOPInstanceUID", "00200013": "InstanceNumber",
}
_PAGING = {"limit", "offset"}
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


def _integer(key: str, value: str) -> int:
    if not re.fullmatch(r"[+-]?\d{1,9}", value.strip()):
        raise BadRequest(f"{key} must be an integer",
                         errors=[{"in": "query", "field": key, "message": "not an integer"}])
    return int(value)


# Each evaluated key: (the levels that evaluate it, what it adds to the query).
_Condition = Callable[[str, dict[str, Any]], sql.Composable]


def _uid_list(column: str, param: str) -> _Condition:
    def condition(value: str, params: dict[str, Any]) -> sql.Composable:
        params[param] = split_uids(value)
        return sql.SQL(f"{column} = ANY(%({param})s)")
    return condition


def _like(column: str, param: str, operator: str = "LIKE") -> _Condition:
    def condition(value: str, params: dict[str, Any]) -> sql.Composable:
        params[param] = wildcard_to_like(value)
        return sql.SQL(f"{column} {operator} %({param})s")
    return condition


def _number(column: str, param: str, key: str) -> _Condition:
    def condition(value: str, params: dict[str, Any]) -> sql.Composable:
        params[param] = _integer(key, value)
        return sql.SQL(f"{column} = %({param})s")
    return condition


def _study_date(value: str, params: dict[str, Any]) -> sql.Composable:
    low, _, high = value.partition("-")
    if "-" not in value:
        high = low
    bounds = []
    if low:
        params["date_from"] = _date(low)
        bounds.append(sql.SQL("s.study_date >= %(date_from)s::date"))
    if high:
        params["date_to"] = _date(high)
        bounds.append(sql.SQL("s.study_date <= %(date_to)s::date"))
    return sql.SQL(" AND ").join(bounds) if bounds else sql.SQL("TRUE")


def _modalities_in_study(value: str, params: dict[str, Any]) -> sql.Composable:
    params["modalities"] = split_uids(value)
    return sql.SQL("EXISTS (SELECT 1 FROM series se WHERE se.study_id = s.id "
                   "AND se.deleted_at IS NULL AND se.modality = ANY(%(modalities)s))")


def _modality(value: str, params: dict[str, Any]) -> sql.Composable:
    params["modality"] = [wildcard_to_like(code) for code in split_uids(value)]
    return sql.SQL("se.modality LIKE ANY(%(modality)s)")


@dataclass(frozen=True)
class Level:
    """A QIDO-RS search level: the path that searches it, the attribute whose UID
    list asks the plugin for a page of it, and the SQL that finds that page."""

    path: str
    uid_key: str
    uid_tag: str
    page: str
    order: str


_SCOPE = """
WHERE s.organization_id = %(org)s AND s.deleted_at IS NULL AND p.deleted_at IS NULL
  AND (%(phi)s OR p.is_deidentified)"""

STUDIES = Level(
    "/studies", "StudyInstanceUID", "0020000D",
    "SELECT s.study_instance_uid, p.is_deidentified\n"
    "FROM studies s JOIN patients p ON p.id = s.patient_id" + _SCOPE,
    "s.study_date DESC NULLS LAST, s.id")
SERIES = Level(
    "/series", "SeriesInstanceUID", "0020000E",
    "SELECT se.series_instance_uid, p.is_deidentified\n"
    "FROM series se JOIN studies s ON s.id = se.study_id\n"
    "JOIN patients p ON p.id = s.patient_id" + _SCOPE + " AND se.deleted_at IS NULL",
    "s.study_date DESC NULLS LAST, s.id, se.series_number NULLS LAST, se.id")
INSTANCES = Level(
    "/instances", "SOPInstanceUID", "00080018",
    "SELECT i.sop_instance_uid, p.is_deidentified\n"
    "FROM instances i JOIN series se ON se.id = i.series_id\n"
    "JOIN studies s ON s.id = se.study_id JOIN patients p ON p.id = s.patient_id"
    + _SCOPE + " AND se.deleted_at IS NULL AND i.deleted_at IS NULL",
    "s.study_date DESC NULLS LAST, s.id, se.series_number NULLS LAST, se.id, "
    "i.instance_number NULLS LAST, i.id")

LEVELS = (STUDIES, SERIES, INSTANCES)
_ALL = frozenset(LEVELS)
_BELOW_STUDY = frozenset({SERIES, INSTANCES})
_KEYS: dict[str, tuple[frozenset[Level], _Condition]] = {
    "StudyInstanceUID": (_ALL, _uid_list("s.study_instance_uid", "study_uids")),
    "PatientID": (_ALL, _like("p.patient_id", "mrn")),
    "AccessionNumber": (_ALL, _like("s.accession_number", "accession")),
    "PatientName": (_ALL, _like("(p.metadata->>'PatientName')", "name", "ILIKE")),
    "StudyDescription": (_ALL, _like("s.study_description", "description", "ILIKE")),
    "StudyDate": (_ALL, _study_date),
    "ModalitiesInStudy": (frozenset({STUDIES}), _modalities_in_study),
    "SeriesInstanceUID": (_BELOW_STUDY, _uid_list("se.series_instance_uid", "series_uids")),
    "Modality": (_BELOW_STUDY, _modality),
    "SeriesNumber": (_BELOW_STUDY, _number("se.series_number", "series_number",
                                           "SeriesNumber")),
    "SOPInstanceUID": (frozenset({INSTANCES}),
                       _uid_list("i.sop_instance_uid", "sop_uids")),
    "InstanceNumber": (frozenset({INSTANCES}),
                       _number("i.instance_number", "instance_number", "InstanceNumber")),
}


@dataclass(frozen=True)
class QidoQuery:
    """What SQL evaluates of a QIDO-RS search, plus the rest for the plugin."""

    level: Level
    conditions: Sequence[sql.Composable]
    params: Mapping[str, Any]
    limit: int
    offset: int
    passthrough: Mapping[str, str]  # keys and options the plugin applies to the page


def parse_query(query: Mapping[str, str], level: Level = STUDIES) -> QidoQuery:
    """The matching keys of ``query`` this level evaluates in SQL (an empty one
    matches everything: it only asks for the attribute), paging, and the rest."""
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {}
    passthrough: dict[str, str] = {}
    for raw_key, value in query.items():
        key = _KEY_ALIASES.get(raw_key.upper(), raw_key)
        if key in _PAGING:
            continue
        levels, condition = _KEYS.get(key, (frozenset(), None))
        if condition is None or level not in levels:
            passthrough[raw_key] = value
        elif value:
            conditions.append(condition(value, params))
    return QidoQuery(level, conditions, params,
                     limit=paging_value("limit", query.get("limit"), DEFAULT_LIMIT, MAX_LIMIT),
                     offset=paging_value("offset", query.get("offset"), 0, MAX_OFFSET),
                     passthrough=passthrough)


def page_sql(query: QidoQuery, organization_id: uuid.UUID, can_read_phi: bool
             ) -> tuple[sql.Composable, dict[str, Any]]:
    """The caller's page at the query's level, newest study first: (uid,
    is_deidentified) rows — one more than the limit, which tells whether more
    remain."""
    where = sql.SQL("").join(sql.SQL(" AND ") + c for c in query.conditions)
    statement = sql.SQL(query.level.page) + where + sql.SQL(
        f" ORDER BY {query.level.order} LIMIT %(limit)s OFFSET %(offset)s")
    return statement, {**query.params, "org": organization_id, "phi": can_read_phi,
                       "limit": query.limit + 1, "offset": query.offset}
