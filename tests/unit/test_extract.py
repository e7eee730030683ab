"""Tag extraction: Orthanc's simplified tags → the mirror's column values."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atrium.mirror.extract import (
    MissingIdentifier,
    extract_instance,
    orthanc_id,
    parse_date,
    parse_int,
    parse_time,
    sanitize_json,
    split_person_name,
)

TAGS = {
    "PatientID": "MRN-1", "PatientName": "Doe^Jane^Q", "PatientBirthDate": "19700102",
    "PatientSex": "f", "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4",
    "SOPInstanceUID": "1.2.3.4.5", "StudyDate": "20240131", "StudyTime": "101500.25",
    "Modality": "CT", "SeriesNumber": "7", "InstanceNumber": "3", "AccessionNumber": "A1",
    "StudyDescription": "CT chest", "PixelData": None, "InstitutionName": "General",
}


def extract(tags: dict[str, object], **kwargs: object) -> object:
    return extract_instance(tags, instance_orthanc_id="abc", file_size=1234,
                            orthanc_metadata={"Origin": "RestApi"}, organization="Org",
                            **kwargs)  # type: ignore[arg-type]


def test_orthanc_ids_are_sha1_of_the_joined_keys_in_groups_of_eight() -> None:
    digest = hashlib.sha1(b"1CT1", usedforsecurity=False).hexdigest()
    assert orthanc_id("1CT1") == "-".join(digest[i:i + 8] for i in range(0, 40, 8))
    # value checked against a running Orthanc: patient "1CT1" of pydicom's CT_small.dcm
    assert orthanc_id("1CT1") == "fa558bce-587a86d3-ad0da9b3-9d043d9d-4f5c5718"
    assert orthanc_id("a", "b") != orthanc_id("a|b", "") and orthanc_id("a", "b") == \
        orthanc_id("a|b")


def test_extract_maps_every_level() -> None:
    record = extract(TAGS)
    assert record.mrn == "MRN-1" and (record.first_name, record.last_name) == ("Jane Q", "Doe")
    assert record.date_of_birth == dt.date(1970, 1, 2) and record.sex == "F"
    assert record.study_time == dt.time(10, 15, 0, 250000)
    assert record.series_number == 7 and record.instance_number == 3
    assert record.study_metadata["InstitutionName"] == "General"
    assert "PixelData" not in record.instance_metadata["tags"]
    assert record.patient_orthanc_id == orthanc_id("MRN-1")
    assert record.series_orthanc_id == orthanc_id("MRN-1", "1.2.3", "1.2.3.4")
    assert record.is_deidentified is False
    assert extract({**TAGS, "PatientIdentityRemoved": "YES"}).is_deidentified is True


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_a_missing_uid_is_refused_with_its_name(missing: str) -> None:
    tags = {k: v for k, v in TAGS.items() if k != missing}
    with pytest.raises(MissingIdentifier, match=missing):
        extract(tags)


def test_hostile_values_are_made_safe() -> None:
    record = extract({**TAGS, "PatientName": "A\x00B^" + "x" * 400, "AccessionNumber": "9" * 300,
                      "StudyDescription": "nul\x00here", "InstitutionName": "bad\x00"})
    assert record.last_name == "AB" and len(record.first_name or "") == 255
    assert len(record.accession_number or "") == 255
    assert record.study_description == "nulhere"
    assert record.study_metadata["InstitutionName"] == "bad"


@pytest.mark.parametrize(("raw", "expected"), [
    ("20240229", dt.date(2024, 2, 29)), ("2023.02.28", dt.date(2023, 2, 28)),
    ("20230229", None), ("2024", None), ("", None), (None, None), ("abcdefgh", None),
])
def test_parse_date(raw: str | None, expected: dt.date | None) -> None:
    assert parse_date(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("10", dt.time(10)), ("1015", dt.time(10, 15)), ("101530.5", dt.time(10, 15, 30, 500000)),
    ("10:15:30", dt.time(10, 15, 30)), ("235960", dt.time(23, 59, 59)), ("25", None),
    ("1x", None), ("", None),
])
def test_parse_time(raw: str, expected: dt.time | None) -> None:
    assert parse_time(raw) == expected


def test_parse_int_rejects_what_postgresql_cannot_hold() -> None:
    assert parse_int("12") == 12 and parse_int(" 3 ") == 3 and parse_int("4.0") == 4
    assert parse_int("99999999999") is None and parse_int("x") is None


def test_person_name_uses_the_alphabetic_group() -> None:
    assert split_person_name("Yamada^Tarou=山田^太郎") == ("Tarou", "Yamada")
    assert split_person_name("") == (None, None)


@given(st.recursive(st.none() | st.text() | st.integers(),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(), c,
                                                                          max_size=3)))
def test_sanitized_json_never_contains_nul(value: object) -> None:
    # JSONB refuses \u0000 anywhere, keys included
    def strings(v: object) -> list[str]:
        if isinstance(v, str):
            return [v]
        if isinstance(v, list):
            return [s for item in v for s in strings(item)]
        if isinstance(v, dict):
            return [s for k, item in v.items() for s in [k, *strings(item)]]
        return []

    assert not any("\x00" in s for s in strings(sanitize_json(value)))


def test_long_values_are_found_and_decoded_with_the_character_set() -> None:
    from atrium.mirror.extract import decode_text, long_value_keywords, tag_path

    tags = {"StudyDescription": None, "PatientName": "A^B", "SOPInstanceUID": None}
    assert long_value_keywords(tags) == ["StudyDescription"]
    assert tag_path("StudyDescription") == "0008-1030"
    assert decode_text("é".encode() * 3 + b" ", "ISO_IR 192") == "ééé"
    assert decode_text("é".encode("latin-1") + b"\x00", "ISO_IR 100") == "é"
    assert decode_text(b"plain ", None) == "plain"
