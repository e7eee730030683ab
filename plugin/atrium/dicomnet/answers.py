"""C-FIND answers: one DICOM dataset per matching row, holding the keys asked for.

Values come from the mirror: the level's unique keys and counts from columns, every
other attribute from the DICOM tag JSON of the row's level or a parent level (the
values as the modality sent them, not the cleaned columns). A key the mirror does not
hold is returned with zero length, as PS3.4 asks. Answers are encoded in UTF-8
(``ISO_IR 192``); Orthanc converts them to its ``DefaultEncoding`` before sending.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

__all__ = ["UNIQUE_KEYS", "answer_dataset", "answer_values"]

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
# Not a real instance: Orthanc parses each answer as a DICOM file, whose meta
# header wants a media storage SOP instance UID.
_ANSWER_INSTANCE_UID = "1.2.826.0.1.3680043.10.1449.1"

UNIQUE_KEYS = {
    "PATIENT": ("PatientID",),
    "STUDY": ("PatientID", "StudyInstanceUID"),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}

# keyword -> the row column holding its value
_COLUMNS = {
    "PatientID": "patient_id",
    "StudyInstanceUID": "study_instance_uid",
    "SeriesInstanceUID": "series_instance_uid",
    "SOPInstanceUID": "sop_instance_uid",
    "NumberOfPatientRelatedStudies": "patient_studies",
    "NumberOfPatientRelatedSeries": "patient_series",
    "NumberOfPatientRelatedInstances": "patient_instances",
    "NumberOfStudyRelatedSeries": "number_of_series",
    "NumberOfStudyRelatedInstances": "number_of_instances",
    "NumberOfSeriesRelatedInstances": "series_instances",
    "ModalitiesInStudy": "modalities_in_study",
}
_METADATA_COLUMNS = ("instance_tags", "series_metadata", "study_metadata", "patient_metadata")


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict):
        return None
    if isinstance(value, list):
        parts = [str(v) for v in value if v is not None and not isinstance(v, (dict, list))]
        return "\\".join(parts) if parts else None
    return str(value)


def answer_values(level: str, return_keys: Iterable[str], row: Mapping[str, Any],
                  retrieve_aet: str) -> dict[str, str | None]:
    """Keyword → value (None: zero length) of one answer, in the order to write."""
    fixed = {"QueryRetrieveLevel": level, "SpecificCharacterSet": "ISO_IR 192",
             "RetrieveAETitle": retrieve_aet, "InstanceAvailability": "ONLINE"}
    keys = dict.fromkeys([*UNIQUE_KEYS[level], *return_keys, "QueryRetrieveLevel"])
    values: dict[str, str | None] = {}
    for keyword in keys:
        if keyword in fixed:
            values[keyword] = fixed[keyword]
        elif keyword in _COLUMNS and row.get(_COLUMNS[keyword]) is not None:
            values[keyword] = _text(row[_COLUMNS[keyword]])
        else:
            values[keyword] = next(
                (_text(meta[keyword]) for meta in (row.get(c) for c in _METADATA_COLUMNS)
                 if isinstance(meta, dict) and meta.get(keyword) is not None), None)
    values["SpecificCharacterSet"] = "ISO_IR 192"
    return values


_BINARY_INT = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_BINARY_FLOAT = frozenset({"FL", "FD"})
_BINARY_OTHER = frozenset({"AT", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})


def _typed(vr: str, value: str | None) -> Any:
    """``value`` in the type pydicom writes for ``vr``; None (zero length) when it
    does not convert — the JSON of the mirror holds binary values as text."""
    if value is None or vr in _BINARY_OTHER:
        return None
    try:
        if vr in _BINARY_INT:
            return int(value.split("\\")[0])
        if vr in _BINARY_FLOAT:
            return float(value.split("\\")[0])
    except ValueError:
        return None
    return value


@functools.cache
def _file_head() -> bytes:
    """Preamble and file meta group, the same for every answer: written once."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(STUDY_ROOT_FIND)
    meta.MediaStorageSOPInstanceUID = UID(_ANSWER_INSTANCE_UID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    head = DicomBytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    return head.getvalue()


@functools.cache
def _tag_and_vr(keyword: str) -> tuple[int, str] | None:
    tag = tag_for_keyword(keyword)
    return None if tag is None else (tag, dictionary_VR(tag).split(" or ")[0])


def answer_dataset(values: Mapping[str, str | None]) -> bytes:
    """The answer as a DICOM file in memory, as Orthanc's ``FindAddAnswer`` takes it.
    Elements are built without pydicom's value validation — a modality's odd value
    (an IS with a fraction, say) goes back as it came — and only the dataset is
    encoded per answer: a large C-FIND answers hundreds of these."""
    ds = Dataset()
    for keyword, value in values.items():
        known = _tag_and_vr(keyword)
        if known is None:
            continue
        tag, vr = known
        typed = Sequence([]) if vr == "SQ" else _typed(vr, value)
        ds[tag] = DataElement(tag, vr, typed, validation_mode=config.IGNORE)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    return _file_head() + body.getvalue()
