"""From Orthanc's view of one instance to the rows of the mirror. Pure: no Orthanc,
no database.

Input is what Orthanc already parsed: the instance's simplified tags
(``/instances/{id}/tags?simplify``, strings already decoded to UTF-8 from the
instance's SpecificCharacterSet), its file size and Orthanc's metadata
(``RemoteAET``, ``Origin``...). Output is one :class:`InstanceRecord` holding the
patient, study, series and instance columns. Every value is made safe for
PostgreSQL: NUL characters removed, strings cut to their column's width, invalid
dates and numbers become ``NULL`` (the raw value stays in ``metadata``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import tag_for_keyword

__all__ = [
    "InstanceRecord",
    "MissingIdentifier",
    "extract_instance",
    "orthanc_id",
    "sanitize_json",
    "series_header",
]

# Tags that describe the patient, study and series levels; they are kept in the
# ``metadata`` of that level (the data model's "DICOM tag JSON").
PATIENT_TAGS = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "OtherPatientIDs",
    "PatientIdentityRemoved", "DeidentificationMethod", "IssuerOfPatientID", "EthnicGroup",
)
STUDY_TAGS = (
    "StudyInstanceUID", "StudyDescription", "ReferringPhysicianName", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "Modality", "InstitutionName", "ProtocolName",
    "ModalitiesInStudy", "RequestedProcedureDescription", "InstitutionalDepartmentName",
)
SERIES_TAGS = (
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "BodyPartExamined",
    "SeriesDate", "SeriesTime", "ProtocolName", "Manufacturer", "ManufacturerModelName",
    "StationName", "OperatorsName", "FrameOfReferenceUID", "Laterality",
)

MIRRORED_TEXT_TAGS = tuple(dict.fromkeys(
    k for k in PATIENT_TAGS + STUDY_TAGS + SERIES_TAGS if not k.endswith("UID")))

# What every instance of a series shares with the others: read from one file of the
# series, they complete the instance-level tags that Orthanc's index holds.
SERIES_HEADER_TAGS = tuple(dict.fromkeys(
    ("SpecificCharacterSet",) + PATIENT_TAGS + STUDY_TAGS + SERIES_TAGS))

# ``instances.metadata.tags_source``: "file" when ``tags`` holds the whole header
# of the instance's file, "index" while it holds only what Orthanc indexes (the
# series header and the instance's main tags); the mirror completes those later.
TAGS_FROM_FILE, TAGS_FROM_INDEX = "file", "index"

# Values bigger than this are left out of ``instances.metadata``: they are binary
# payloads or huge sequences, not searchable header data, and stay in Orthanc.
MAX_METADATA_VALUE_CHARS = 16 * 1024
MAX_METADATA_CHARS = 1024 * 1024


class MissingIdentifier(ValueError):
    """The instance lacks a UID the mirror keys on; it cannot be mirrored."""


@dataclass(frozen=True)
class InstanceRecord:
    """One stored instance and its parents, as column values."""

    organization: str
    # Orthanc identifiers
    patient_orthanc_id: str
    study_orthanc_id: str
    series_orthanc_id: str
    instance_orthanc_id: str
    # patients
    mrn: str
    first_name: str | None
    last_name: str | None
    date_of_birth: dt.date | None
    sex: str | None
    is_deidentified: bool
    patient_metadata: dict[str, Any]
    # studies
    study_instance_uid: str
    accession_number: str | None
    study_date: dt.date | None
    study_time: dt.time | None
    study_description: str | None
    study_modality: str | None
    referring_physician: str | None
    study_metadata: dict[str, Any]
    # series
    series_instance_uid: str
    series_number: int | None
    series_description: str | None
    series_modality: str | None
    body_part_examined: str | None
    series_metadata: dict[str, Any]
    # instances
    sop_instance_uid: str
    instance_number: int | None
    acquisition_date: dt.date | None
    acquisition_time: dt.time | None
    storage_path: str
    file_size_bytes: int
    instance_metadata: dict[str, Any]


def orthanc_id(*uids: str) -> str:
    """Orthanc's identifier of a resource: SHA-1 of its parents' keys joined by ``|``
    (PatientID; PatientID|StudyUID; ...), as five dash-separated groups of 8 hex digits."""
    digest = hashlib.sha1("|".join(uids).encode("utf-8"), usedforsecurity=False).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def long_value_keywords(tags: dict[str, Any]) -> list[str]:
    """The mirrored text tags present in ``tags`` with a null value: Orthanc's JSON
    leaves out values longer than 256 bytes, which must then be read raw."""
    return [k for k in MIRRORED_TEXT_TAGS if k in tags and tags[k] is None]


def tag_path(keyword: str) -> str:
    """``StudyDescription`` -> ``0008-1030``, the form of Orthanc's ``/content`` URLs."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {keyword!r}")
    return f"{tag >> 16:04x}-{tag & 0xFFFF:04x}"


def decode_text(raw: bytes, specific_character_set: Any) -> str:
    """A raw text value decoded with the instance's Specific Character Set."""
    if isinstance(specific_character_set, str):
        charsets = [c.strip() for c in specific_character_set.split("\\")]
    else:
        charsets = list(specific_character_set or [])
    text = decode_bytes(raw.rstrip(b"\x00 "), convert_encodings(charsets or ["ISO_IR 6"]), set())
    return text.rstrip(" ")


def clean_text(value: Any, width: int | None = None) -> str | None:
    """A tag value as safe text: ``None`` for absent or blank, NULs dropped, trimmed,
    and cut to ``width`` characters (the column's) when given."""
    if value is None:
        return None
    if isinstance(value, list):
        value = "\\".join(str(v) for v in value if v is not None)
    text = str(value).replace("\x00", "").strip()
    if not text:
        return None
    return text[:width] if width else text


def parse_date(value: Any) -> dt.date | None:
    """DICOM DA (``YYYYMMDD``, also the old ``YYYY.MM.DD``); ``None`` when invalid."""
    text = clean_text(value)
    if not text:
        return None
    digits = text.replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


_TIME_RE = re.compile(r"^(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?(?:\.(\d{1,6}))?$")


def parse_time(value: Any) -> dt.time | None:
    """DICOM TM (``HH``, ``HHMM``, ``HHMMSS``, ``HHMMSS.FFFFFF``, the old ``HH:MM:SS``);
    ``None`` when invalid. A leap second 60 is clamped to 59."""
    text = clean_text(value)
    if not text:
        return None
    match = _TIME_RE.match(text)
    if not match:
        return None
    hour, minute, second, fraction = match.groups()
    try:
        return dt.time(
            int(hour), int(minute or 0), min(int(second or 0), 59),
            int((fraction or "0").ljust(6, "0")),
        )
    except ValueError:
        return None


def parse_int(value: Any) -> int | None:
    """DICOM IS; ``None`` when invalid or outside PostgreSQL's INTEGER."""
    text = clean_text(value)
    if not text:
        return None
    try:
        number = int(float(text)) if "." in text or "e" in text.lower() else int(text)
    except (ValueError, OverflowError):
        return None
    return number if -(2**31) <= number < 2**31 else None


def split_person_name(value: Any) -> tuple[str | None, str | None]:
    """(first, last) from a DICOM PN ``Family^Given^Middle^Prefix^Suffix``; only the
    alphabetic group (before any ``=``) is used."""
    text = clean_text(value)
    if not text:
        return None, None
    alphabetic = text.split("=")[0]
    parts = alphabetic.split("^")
    last = clean_text(parts[0], 255)
    first = clean_text(" ".join(p for p in parts[1:3] if p.strip()), 255)
    return first, last


def normalize_sex(value: Any) -> str | None:
    text = (clean_text(value) or "").upper()
    return text if text in {"M", "F", "O"} else ("U" if text else None)


def sanitize_json(value: Any, limit: int = MAX_METADATA_VALUE_CHARS) -> Any:
    """A JSON value PostgreSQL's JSONB accepts: no NUL characters (JSONB rejects
    ``\\u0000``), strings over ``limit`` characters dropped (returned as ``None``)."""
    if isinstance(value, str):
        if len(value) > limit:
            return None
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [sanitize_json(v, limit) for v in value]
    if isinstance(value, dict):
        return {
            str(k).replace("\x00", ""): sanitize_json(v, limit)
            for k, v in value.items()
        }
    return value


def _pick(tags: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: sanitize_json(tags[name]) for name in names if name in tags}


def series_header(tags: dict[str, Any]) -> dict[str, Any]:
    """The tags of one instance's file that all instances of its series share."""
    return {name: tags[name] for name in SERIES_HEADER_TAGS if name in tags}


def _instance_metadata(tags: dict[str, Any], orthanc_metadata: dict[str, Any],
                       tags_source: str) -> dict[str, Any]:
    cleaned = sanitize_json({k: v for k, v in tags.items() if k != "PixelData"})
    if len(repr(cleaned)) > MAX_METADATA_CHARS:
        # A pathological header (e.g. thousands of sequence items): keep the flat
        # values only, the full header stays available from Orthanc.
        cleaned = {k: v for k, v in cleaned.items() if not isinstance(v, (list, dict))}
    return {"tags": cleaned, "orthanc": sanitize_json(orthanc_metadata),
            "tags_source": tags_source}


def extract_instance(
    tags: dict[str, Any],
    *,
    instance_orthanc_id: str,
    file_size: int,
    orthanc_metadata: dict[str, Any],
    organization: str,
    tags_source: str = TAGS_FROM_FILE,
) -> InstanceRecord:
    """The mirror's rows for one instance. ``tags_source`` says whether ``tags`` is
    the file's whole header or only what Orthanc indexes (see ``TAGS_FROM_INDEX``).

    Raises
    ------
    MissingIdentifier
        When StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID is absent.
    """
    study_uid = clean_text(tags.get("StudyInstanceUID"), 255)
    series_uid = clean_text(tags.get("SeriesInstanceUID"), 255)
    sop_uid = clean_text(tags.get("SOPInstanceUID"), 255)
    for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                      ("SOPInstanceUID", sop_uid)):
        if not uid:
            raise MissingIdentifier(f"instance {instance_orthanc_id} has no {name}")
    assert study_uid and series_uid and sop_uid  # narrowed for the type checker

    # Orthanc keys patients on the raw PatientID (possibly empty); so do we.
    raw_patient_id = str(tags.get("PatientID") or "").replace("\x00", "")
    mrn = raw_patient_id.strip()[:255]
    first, last = split_person_name(tags.get("PatientName"))
    removed = (clean_text(tags.get("PatientIdentityRemoved")) or "").upper() == "YES"
    modality = clean_text(tags.get("Modality"), 50)
    patient_key = raw_patient_id

    return InstanceRecord(
        organization=organization,
        patient_orthanc_id=orthanc_id(patient_key),
        study_orthanc_id=orthanc_id(patient_key, str(tags.get("StudyInstanceUID"))),
        series_orthanc_id=orthanc_id(
            patient_key, str(tags.get("StudyInstanceUID")), str(tags.get("SeriesInstanceUID"))),
        instance_orthanc_id=instance_orthanc_id,
        mrn=mrn,
        first_name=first,
        last_name=last,
        date_of_birth=parse_date(tags.get("PatientBirthDate")),
        sex=normalize_sex(tags.get("PatientSex")),
        is_deidentified=removed,
        patient_metadata=_pick(tags, PATIENT_TAGS),
        study_instance_uid=study_uid,
        accession_number=clean_text(tags.get("AccessionNumber"), 255),
        study_date=parse_date(tags.get("StudyDate")),
        study_time=parse_time(tags.get("StudyTime")),
        study_description=clean_text(tags.get("StudyDescription")),
        study_modality=modality,
        referring_physician=clean_text(tags.get("ReferringPhysicianName"), 255),
        study_metadata=_pick(tags, STUDY_TAGS),
        series_instance_uid=series_uid,
        series_number=parse_int(tags.get("SeriesNumber")),
        series_description=clean_text(tags.get("SeriesDescription")),
        series_modality=modality,
        body_part_examined=clean_text(tags.get("BodyPartExamined"), 255),
        series_metadata=_pick(tags, SERIES_TAGS),
        sop_instance_uid=sop_uid,
        instance_number=parse_int(tags.get("InstanceNumber")),
        acquisition_date=parse_date(tags.get("AcquisitionDate")),
        acquisition_time=parse_time(tags.get("AcquisitionTime")),
        storage_path=f"orthanc://instances/{instance_orthanc_id}",
        file_size_bytes=max(int(file_size), 0),
        instance_metadata=_instance_metadata(tags, orthanc_metadata, tags_source),
    )
