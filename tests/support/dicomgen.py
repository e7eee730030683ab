"""Synthetic DICOM for tests and benchmarks: small, valid CT-like instances with
the UIDs and patient fields a test asks for."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["StudySpec", "make_instance", "make_study", "write_files"]


@dataclass
class StudySpec:
    patient_id: str = "MRN-0001"
    patient_name: str = "Doe^Jane"
    birth_date: str = "19700101"
    sex: str = "F"
    study_uid: str = ""
    accession: str = "ACC1"
    description: str = "CT chest"
    modality: str = "CT"
    deidentified: bool = False
    series: int = 2
    instances_per_series: int = 3
    rows: int = 16

    def __post_init__(self) -> None:
        self.study_uid = self.study_uid or generate_uid()


def make_instance(spec: StudySpec, series_uid: str, series_number: int, instance_number: int,
                  sop_uid: str | None = None, **overrides: object) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.PatientID = spec.patient_id
    ds.PatientName = spec.patient_name
    ds.PatientBirthDate = spec.birth_date
    ds.PatientSex = spec.sex
    if spec.deidentified:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "test"
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyDate = "20240131"
    ds.StudyTime = "101500"
    ds.StudyDescription = spec.description
    ds.AccessionNumber = spec.accession
    ds.ReferringPhysicianName = "Smith^John"
    ds.StudyID = "1"
    ds.Modality = spec.modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"series {series_number}"
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = instance_number
    ds.AcquisitionDate = "20240131"
    ds.AcquisitionTime = "101600.5"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Rows = ds.Columns = spec.rows
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(spec.rows * spec.rows, dtype=np.uint16) + instance_number).tobytes()
    for keyword, value in overrides.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        elif isinstance(value, bytes):
            # Raw bytes go into the file unchecked: how malformed values are made.
            tag = Tag(tag_for_keyword(keyword))
            raw = value if len(value) % 2 == 0 else value + b" "
            ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
        else:
            setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_study(spec: StudySpec) -> list[bytes]:
    files = []
    for s in range(1, spec.series + 1):
        series_uid = generate_uid()
        for i in range(1, spec.instances_per_series + 1):
            files.append(make_instance(spec, series_uid, s, i))
    return files


def write_files(directory: Path, blobs: list[bytes]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, blob in enumerate(blobs):
        path = directory / f"{n:06d}.dcm"
        path.write_bytes(blob)
        paths.append(path)
    return paths
