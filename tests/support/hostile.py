"""Hostile and malformed DICOM made in the tests: the corpus every input path must
survive (issue: "one hostile file must not take the PACS down").

Each generator starts from an ordinary instance of :mod:`tests.support.dicomgen`
(explicit VR little endian, Part 10) and breaks it in one way, at the byte level
where pydicom would refuse to write the damage.
"""

from __future__ import annotations

import struct

from pydicom.uid import generate_uid

from tests.support.dicomgen import StudySpec, make_instance

__all__ = ["CORPUS", "corpus", "nested_sequences", "ordinary"]

_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a defined length."""
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def ordinary(patient_id: str = "HOSTILE", **overrides: object) -> bytes:
    """A valid one-instance CT study of its own."""
    spec = StudySpec(patient_id=patient_id, series=1, instances_per_series=1)
    return make_instance(spec, generate_uid(), 1, 1, **overrides)


def nested_sequences(depth: int = 5000, patient_id: str = "HOSTILE-NESTED") -> bytes:
    """An ordinary CT with a Content Sequence (0040,A730) whose items nest ``depth``
    Content Sequences deep, every length undefined, placed before the pixel data:
    the file that made Orthanc 1.10 (DCMTK's recursive JSON conversion) and
    pydicom on a small thread stack crash."""
    blob = ordinary(patient_id)
    opening = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    nested = (opening + _ITEM) * depth + (_ITEM_END + _SEQUENCE_END) * depth
    at = _element_offset(blob, 0x7FE0, 0x0010)
    return blob[:at] + nested + blob[at:]


def _element_offset(blob: bytes, group: int, element: int) -> int:
    offset = blob.find(struct.pack("<HH", group, element), 132)
    assert offset > 0, f"({group:04x},{element:04x}) not found"
    return offset


def truncated() -> bytes:
    """Cut in the middle of the pixel data."""
    blob = ordinary("HOSTILE-TRUNCATED")
    return blob[: _element_offset(blob, 0x7FE0, 0x0010) + 40]


def length_beyond_file() -> bytes:
    """StudyDescription declares 60,000 bytes; the file ends long before."""
    blob = ordinary("HOSTILE-LENGTH")
    at = _element_offset(blob, 0x0008, 0x1030)
    return blob[: at + 6] + struct.pack("<H", 60000) + blob[at + 8:]


def wrong_vr() -> bytes:
    """PatientSex with the VR 'ZZ', which no DICOM edition defines."""
    blob = ordinary("HOSTILE-VR")
    at = _element_offset(blob, 0x0010, 0x0040)
    return blob[: at + 4] + b"ZZ" + blob[at + 6:]


def odd_binary_length() -> bytes:
    """Rows (US) with a 3-byte value."""
    blob = ordinary("HOSTILE-US")
    at = _element_offset(blob, 0x0028, 0x0010)
    return blob[:at] + _explicit(0x0028, 0x0010, b"US", b"\x10\x00\x00") + blob[at + 10:]


def huge_pixel_matrix() -> bytes:
    """Declares 8192 x 8192 pixels, 16 bits, 52 frames (about 7 GB) and holds
    32 kB of pixel data."""
    blob = ordinary("HOSTILE-PIXELS", Rows=8192, Columns=8192, NumberOfFrames="52")
    at = _element_offset(blob, 0x7FE0, 0x0010)
    return blob[:at] + _explicit(0x7FE0, 0x0010, b"OW", b"\x00" * 32768)


def invalid_uids() -> bytes:
    """A StudyInstanceUID of letters and a SOPInstanceUID of 80 characters."""
    return ordinary("HOSTILE-UID", StudyInstanceUID="not.a.uid",
                    SOPInstanceUID="1." + "2" * 78)


def invalid_character_set() -> bytes:
    """A SpecificCharacterSet no one defines, and bytes that are no text in any."""
    return ordinary("HOSTILE-CHARSET", SpecificCharacterSet=b"ISO_IR 999",
                    PatientName=b"\xff\xfe^Bad\x00")


def header_without_dataset() -> bytes:
    """The preamble and the file meta group, then nothing."""
    blob = ordinary("HOSTILE-EMPTY")
    meta_length = struct.unpack("<I", blob[140:144])[0]
    return blob[: 144 + meta_length]


def empty() -> bytes:
    return b""


def not_dicom() -> bytes:
    return b"%PDF-1.7\n" + b"\x00" * 300


CORPUS = {
    "nested_sequences": nested_sequences,
    "truncated": truncated,
    "length_beyond_file": length_beyond_file,
    "wrong_vr": wrong_vr,
    "odd_binary_length": odd_binary_length,
    "huge_pixel_matrix": huge_pixel_matrix,
    "invalid_uids": invalid_uids,
    "invalid_character_set": invalid_character_set,
    "header_without_dataset": header_without_dataset,
    "empty": empty,
    "not_dicom": not_dicom,
}


def corpus() -> dict[str, bytes]:
    """Every hostile file, freshly made (new UIDs each call)."""
    return {name: make() for name, make in CORPUS.items()}
