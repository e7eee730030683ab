"""PS3.4 C-FIND matching (C.2.2.2) as SQL over the mirror. Pure: no database, no Orthanc.

A C-FIND identifier is a set of keys, each either a *return key* (zero length: only
asks for the attribute) or a *matching key*. Supported matching, by attribute kind:

- universal matching: an empty value, or ``*`` alone;
- single value matching: exact, case-sensitive except for person names (PN), which
  match case-insensitively as Orthanc does by default;
- wildcard matching: ``*`` (any run) and ``?`` (one character), for text and PN;
- range matching: ``A-B``, ``-B``, ``A-`` for dates (DA) and times (TM);
- list of UID matching: UIDs separated by ``\\`` (also accepted for codes such as
  Modality and for integers);
- sequence matching: not supported; a sequence is a return key (Orthanc ignores such
  constraints the same way).

Values reach the SQL only as parameters. A key of a level below the query's is not a
filter (PS3.4 does not allow it) and is returned empty. A key the mirror has no
column for matches against the level's DICOM tag JSON (``metadata``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

__all__ = [
    "LEVELS", "FindQuery", "QueryError", "identifier_from_elements", "parse_find",
    "wildcard_to_like",
]

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_RANK = {level: rank for rank, level in enumerate(LEVELS)}

# The mirror's tag JSON of each level: where a key without its own column is matched
# and where most returned values come from.
METADATA = {
    "PATIENT": "p.metadata",
    "STUDY": "s.metadata",
    "SERIES": "se.metadata",
    "IMAGE": "i.metadata->'tags'",
}


class QueryError(ValueError):
    """The identifier cannot be evaluated (no or unknown level, a malformed range)."""


@dataclass(frozen=True)
class Key:
    """How one attribute is matched: its level, its kind and the trusted SQL of its value."""

    level: str
    kind: str  # text | pn | uid | code | int | date | time | datetext | modalities
    expr: str


KEYS: dict[str, Key] = {
    "PatientID": Key("PATIENT", "text", "p.patient_id"),
    "PatientName": Key("PATIENT", "pn", "p.metadata->>'PatientName'"),
    "PatientBirthDate": Key("PATIENT", "date", "p.date_of_birth"),
    "PatientSex": Key("PATIENT", "code", "p.metadata->>'PatientSex'"),
    "StudyInstanceUID": Key("STUDY", "uid", "s.study_instance_uid"),
    "StudyDate": Key("STUDY", "date", "s.study_date"),
    "StudyTime": Key("STUDY", "time", "s.study_time"),
    "AccessionNumber": Key("STUDY", "text", "s.accession_number"),
    "StudyID": Key("STUDY", "text", "s.metadata->>'StudyID'"),
    "StudyDescription": Key("STUDY", "text", "s.study_description"),
    "ReferringPhysicianName": Key("STUDY", "pn", "s.metadata->>'ReferringPhysicianName'"),
    "ModalitiesInStudy": Key("STUDY", "modalities", "se2.modality"),
    "SeriesInstanceUID": Key("SERIES", "uid", "se.series_instance_uid"),
    "Modality": Key("SERIES", "code", "se.modality"),
    "SeriesNumber": Key("SERIES", "int", "se.series_number"),
    "SeriesDescription": Key("SERIES", "text", "se.series_description"),
    "BodyPartExamined": Key("SERIES", "code", "se.body_part_examined"),
    "SeriesDate": Key("SERIES", "datetext", "se.metadata->>'SeriesDate'"),
    "SOPInstanceUID": Key("IMAGE", "uid", "i.sop_instance_uid"),
    "SOPClassUID": Key("IMAGE", "uid", "i.metadata->'tags'->>'SOPClassUID'"),
    "InstanceNumber": Key("IMAGE", "int", "i.instance_number"),
}

# Keys that are only ever returned: computed by the SCP, never a constraint.
RETURN_ONLY = frozenset({
    "QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability",
    "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "NumberOfSeriesRelatedInstances",
    "TimezoneOffsetFromUTC", "QueryRetrieveView",
})

_LEVEL_ALIASES = {"PATIENT": "PATIENT", "STUDY": "STUDY", "SERIES": "SERIES",
                  "IMAGE": "IMAGE", "INSTANCE": "IMAGE"}
_DATE_RE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_TIME_RE = re.compile(r"^(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?(?:\.(\d{1,6}))?$")


def identifier_from_elements(elements: Iterable[tuple[int, int, str]]) -> dict[str, str]:
    """The identifier's keys by keyword from (group, element, value) triples as
    Orthanc hands them over; private and unknown tags are dropped."""
    identifier: dict[str, str] = {}
    for group, element, value in elements:
        keyword = keyword_for_tag((group << 16) | element)
        if keyword:
            identifier[keyword] = value or ""
    return identifier


def wildcard_to_like(value: str) -> str:
    """DICOM wildcards (``*``, ``?``) as a LIKE pattern, LIKE's own characters escaped."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _is_universal(value: str) -> bool:
    return value == "" or set(value) == {"*"}


def parse_date(text: str) -> dt.date:
    match = _DATE_RE.match(text)
    if not match:
        raise QueryError(f"not a DICOM date (YYYYMMDD): {text!r}")
    try:
        return dt.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise QueryError(f"not a calendar date: {text!r}") from None


def _time_bounds(text: str) -> tuple[dt.time, dt.time]:
    """A TM value and the last instant it stands for: ``10`` is 10:00:00 to 10:59:59.999999."""
    match = _TIME_RE.match(text)
    if not match:
        raise QueryError(f"not a DICOM time (HHMMSS.FFFFFF): {text!r}")
    hour, minute, second, fraction = match.groups()
    try:
        low = dt.time(int(hour), int(minute or 0), int(second or 0),
                      int((fraction or "0").ljust(6, "0")))
        high = dt.time(int(hour), int(minute or 59), int(second or 59),
                       int((fraction or "").ljust(6, "9")) if fraction else 999999)
    except ValueError:
        raise QueryError(f"not a time of day: {text!r}") from None
    return low, high


def _split_range(value: str) -> tuple[str, str, bool]:
    """(low, high, is_range) of ``A-B``/``-B``/``A-``/``A``."""
    if "-" not in value:
        return value, value, False
    low, _, high = value.partition("-")
    if not low and not high:
        raise QueryError("a range needs at least one bound")
    return low.strip(), high.strip(), True


@dataclass
class _Builder:
    conditions: list[sql.Composable] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def param(self, value: Any) -> sql.Placeholder:
        name = f"k{len(self.params)}"
        self.params[name] = value
        return sql.Placeholder(name)

    def add(self, template: str, *args: sql.Composable) -> None:
        self.conditions.append(sql.SQL(template).format(*args))


def _text_condition(builder: _Builder, expr: sql.Composable, value: str,
                    case_insensitive: bool) -> None:
    alternatives: list[sql.Composable] = []
    for alternative in (v for v in value.split("\\") if v != ""):
        if "*" in alternative or "?" in alternative:
            operator = "ILIKE" if case_insensitive else "LIKE"
            alternatives.append(sql.SQL("{} " + operator + " {}").format(
                expr, builder.param(wildcard_to_like(alternative))))
        elif case_insensitive:
            alternatives.append(sql.SQL("lower({}) = lower({})").format(
                expr, builder.param(alternative)))
        else:
            alternatives.append(sql.SQL("{} = {}").format(expr, builder.param(alternative)))
    if alternatives:
        builder.conditions.append(sql.SQL("(") + sql.SQL(" OR ").join(alternatives) + sql.SQL(")"))


def _range_condition(builder: _Builder, expr: sql.Composable, low: Any, high: Any) -> None:
    if low is not None:
        builder.add("{} >= {}", expr, builder.param(low))
    if high is not None:
        builder.add("{} <= {}", expr, builder.param(high))


def _condition(builder: _Builder, key: Key, expr: sql.Composable, value: str) -> None:
    kind = key.kind
    if kind in ("text", "pn", "code"):
        _text_condition(builder, expr, value, case_insensitive=kind == "pn")
    elif kind == "uid":
        uids = [uid.strip() for uid in value.split("\\") if uid.strip()]
        builder.add("{} = ANY({})", expr, builder.param(uids))
    elif kind == "int":
        try:
            numbers = [int(v) for v in value.split("\\") if v.strip()]
        except ValueError:
            raise QueryError(f"not an integer: {value!r}") from None
        builder.add("{} = ANY({})", expr, builder.param(numbers))
    elif kind in ("date", "datetext"):
        low, high, _ = _split_range(value)
        low_date = parse_date(low) if low else None
        high_date = parse_date(high) if high else None
        if kind == "datetext":  # YYYYMMDD text compares in date order
            _range_condition(builder, expr, low_date and low_date.strftime("%Y%m%d"),
                             high_date and high_date.strftime("%Y%m%d"))
        else:
            _range_condition(builder, expr, low_date, high_date)
    elif kind == "time":
        low, high, _ = _split_range(value)
        _range_condition(builder, expr, _time_bounds(low)[0] if low else None,
                         _time_bounds(high)[1] if high else None)
    elif kind == "modalities":
        codes = [v.strip() for v in value.split("\\") if v.strip()]
        builder.add("EXISTS (SELECT 1 FROM series se2 WHERE se2.study_id = s.id "
                    "AND se2.deleted_at IS NULL AND se2.modality = ANY({}))",
                    builder.param(codes))
    else:  # pragma: no cover - KEYS only holds the kinds above
        raise AssertionError(kind)


@dataclass(frozen=True)
class FindQuery:
    """One C-FIND identifier, ready for SQL: the level, the keys to return and the
    conditions (parameterised) that the level's rows must meet."""

    level: str
    return_keys: tuple[str, ...]
    conditions: tuple[sql.Composable, ...]
    params: Mapping[str, Any]


def query_level(identifier: Mapping[str, str]) -> str:
    raw = (identifier.get("QueryRetrieveLevel") or "").strip().upper()
    level = _LEVEL_ALIASES.get(raw)
    if level is None:
        raise QueryError(f"QueryRetrieveLevel must be PATIENT, STUDY, SERIES or IMAGE, "
                         f"got {raw!r}")
    return level


def parse_find(identifier: Mapping[str, str]) -> FindQuery:
    """The SQL parts of a C-FIND identifier (keyword → value, as Orthanc decoded it to
    UTF-8).

    Raises
    ------
    QueryError
        When the level is missing or unknown, or a date, time or number is malformed.
    """
    level = query_level(identifier)
    builder = _Builder()
    for keyword, raw in identifier.items():
        value = (raw or "").strip()
        if keyword in RETURN_ONLY or _is_universal(value):
            continue
        tag = tag_for_keyword(keyword)
        if tag is None or dictionary_VR(tag) == "SQ":
            continue  # sequence matching is not supported: a return key
        key = KEYS.get(keyword) or Key(level, "text", "")
        if _RANK[key.level] > _RANK[level]:
            continue  # a lower level's key cannot constrain this level
        if key.expr:
            expr: sql.Composable = sql.SQL(key.expr)
        else:
            expr = sql.SQL(METADATA[level] + "->>") + builder.param(keyword)
        _condition(builder, key, expr, value)
    return_keys = tuple(k for k in identifier if k not in ("QueryRetrieveLevel",))
    return FindQuery(level, return_keys, tuple(builder.conditions), builder.params)
