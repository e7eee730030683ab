"""The pure core of DICOM networking: PS3.4 matching to SQL, the AE-title policy,
answer datasets, the move planner and the C-GET lock-down. No Orthanc, no database."""

from __future__ import annotations

import datetime as dt
import io
import uuid
from typing import Any

import pydicom
import pytest

from atrium.dicomnet.answers import answer_dataset, answer_values
from atrium.dicomnet.matching import QueryError, identifier_from_elements, parse_find
from atrium.dicomnet.modalities import lock_down_get, without_get
from atrium.dicomnet.policy import AetPolicy
from atrium.dicomnet.search import MoveIdentifiers, find_statement, move_statement
from atrium.settings import SettingsError, load_settings

ORG = uuid.UUID(int=7)


def rendered(parts: Any) -> str:
    """SQL text with placeholders left as names: enough to read what is matched."""
    return "".join(part.as_string(None) for part in parts)


def test_identifier_takes_keywords_of_known_tags_and_drops_private_ones() -> None:
    identifier = identifier_from_elements([(0x0008, 0x0052, "STUDY"), (0x0010, 0x0010, "Doe*"),
                                           (0x0009, 0x1001, "private")])

    assert identifier == {"QueryRetrieveLevel": "STUDY", "PatientName": "Doe*"}


def test_return_keys_and_universal_values_add_no_condition() -> None:
    query = parse_find({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "",
                        "PatientName": "*", "NumberOfStudyRelatedInstances": "3"})

    assert query.conditions == () and query.params == {}
    assert query.return_keys == ("StudyInstanceUID", "PatientName",
                                 "NumberOfStudyRelatedInstances")


def test_person_name_wildcards_become_case_insensitive_like_with_escapes() -> None:
    query = parse_find({"QueryRetrieveLevel": "PATIENT", "PatientName": "o'b?ien_%*"})

    assert "ILIKE" in rendered(query.conditions)
    assert list(query.params.values()) == ["o'b_ien\\_\\%%"]


def test_single_text_value_is_exact_and_case_sensitive() -> None:
    query = parse_find({"QueryRetrieveLevel": "STUDY", "AccessionNumber": "ACC1"})

    assert rendered(query.conditions) == "(s.accession_number = %(k0)s)"
    assert query.params == {"k0": "ACC1"}


def test_uid_list_matches_any_of_the_uids() -> None:
    query = parse_find({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2\\1.3 ",
                        "SeriesInstanceUID": ""})

    assert rendered(query.conditions) == "s.study_instance_uid = ANY(%(k0)s)"
    assert query.params == {"k0": ["1.2", "1.3"]}


@pytest.mark.parametrize(("value", "bounds"), [
    ("20240101-20241231", [dt.date(2024, 1, 1), dt.date(2024, 12, 31)]),
    ("-20231231", [dt.date(2023, 12, 31)]),
    ("20240101-", [dt.date(2024, 1, 1)]),
    ("20240131", [dt.date(2024, 1, 31), dt.date(2024, 1, 31)]),
])
def test_date_ranges_bound_the_date_column(value: str, bounds: list[dt.date]) -> None:
    query = parse_find({"QueryRetrieveLevel": "STUDY", "StudyDate": value})

    assert list(query.params.values()) == bounds
    assert all("s.study_date" in rendered([c]) for c in query.conditions)


def test_a_time_matches_the_whole_span_of_its_precision() -> None:
    query = parse_find({"QueryRetrieveLevel": "STUDY", "StudyTime": "10-1130"})

    assert list(query.params.values()) == [dt.time(10, 0, 0), dt.time(11, 30, 59, 999999)]


@pytest.mark.parametrize("identifier", [
    {"StudyInstanceUID": ""},
    {"QueryRetrieveLevel": "WORKLIST"},
    {"QueryRetrieveLevel": "STUDY", "StudyDate": "2024-13-01"},
    {"QueryRetrieveLevel": "STUDY", "StudyDate": "20241301"},
    {"QueryRetrieveLevel": "SERIES", "SeriesNumber": "two"},
    {"QueryRetrieveLevel": "STUDY", "StudyTime": "25"},
])
def test_unusable_identifiers_are_query_errors(identifier: dict[str, str]) -> None:
    with pytest.raises(QueryError):
        parse_find(identifier)


def test_lower_level_keys_do_not_constrain_and_unknown_keys_match_the_level_tags() -> None:
    query = parse_find({"QueryRetrieveLevel": "STUDY", "SOPInstanceUID": "1.2.3",
                        "InstitutionName": "General*"})

    assert rendered(query.conditions) == "(s.metadata->>%(k0)s LIKE %(k1)s)"
    assert query.params == {"k0": "InstitutionName", "k1": "General%"}


def test_sql_metacharacters_stay_parameters() -> None:
    hostile = "x'; DROP TABLE patients; --"
    query = parse_find({"QueryRetrieveLevel": "PATIENT", "PatientID": hostile})
    statement, params = find_statement(query, ORG, 10)

    assert hostile not in rendered([statement])
    assert hostile in params.values()
    assert params["org"] == ORG and params["limit"] == 10


def test_computed_columns_are_only_asked_for_when_wanted() -> None:
    plain = find_statement(parse_find({"QueryRetrieveLevel": "STUDY"}), ORG, 5)[1]
    wanted = find_statement(parse_find({"QueryRetrieveLevel": "STUDY",
                                        "ModalitiesInStudy": ""}), ORG, 5)[1]

    assert plain["modalities"] is False and wanted["modalities"] is True


def test_policy_maps_aets_and_gives_unmapped_nothing_by_default() -> None:
    safe = AetPolicy({"NORTH": "North"}, "Default")
    lenient = AetPolicy({"NORTH": "North"}, "Default", unmapped="default")

    assert safe.organization_for("NORTH ") == "North"
    assert safe.organization_for("north") is None  # AE titles are case-sensitive
    assert safe.organization_for("OTHER") is None
    assert safe.organization_for("") is None
    assert lenient.organization_for("OTHER") == "Default"
    with pytest.raises(ValueError, match="unmapped"):
        AetPolicy({}, "Default", unmapped="everyone")


def test_unmapped_setting_is_validated_with_one_line() -> None:
    settings = load_settings({"Atrium": {"DatabaseUrl": "postgresql://x/y"}}, environ={})
    lenient = load_settings({"Atrium": {"DatabaseUrl": "postgresql://x/y",
                                        "DicomUnmappedAet": "default"}}, environ={})

    assert settings.dicom_unmapped_aet == "none"
    assert lenient.dicom_unmapped_aet == "default"
    with pytest.raises(SettingsError, match="ATRIUM_DICOM_UNMAPPED_AET"):
        load_settings({"Atrium": {"DatabaseUrl": "postgresql://x/y"}},
                      environ={"ATRIUM_DICOM_UNMAPPED_AET": "all"})
    with pytest.raises(SettingsError, match="DicomAlwaysAllowGet"):
        load_settings({"DicomAlwaysAllowGet": True,
                       "Atrium": {"DatabaseUrl": "postgresql://x/y"}}, environ={})


def test_answer_holds_the_keys_asked_for_from_the_mirror() -> None:
    row = {"is_deidentified": False, "patient_id": "MRN1",
           "patient_metadata": {"PatientName": "Doe^Jane", "PatientSex": "F"},
           "study_instance_uid": "1.2.3",
           "study_metadata": {"StudyDate": "20240131", "StudyDescription": "CT chest"},
           "number_of_instances": 6, "modalities_in_study": "CT\\SR"}
    values = answer_values("STUDY", ["PatientName", "StudyDate", "ModalitiesInStudy",
                                     "NumberOfStudyRelatedInstances", "ReferringPhysicianName",
                                     "ReferencedStudySequence"], row, "ATRIUM")
    ds = pydicom.dcmread(io.BytesIO(answer_dataset(values)))

    assert ds.QueryRetrieveLevel == "STUDY"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert (ds.PatientID, ds.StudyInstanceUID) == ("MRN1", "1.2.3")
    assert ds.PatientName == "Doe^Jane" and ds.StudyDate == "20240131"
    assert list(ds.ModalitiesInStudy) == ["CT", "SR"]
    assert ds.NumberOfStudyRelatedInstances == 6
    assert ds.ReferringPhysicianName == "" and len(ds.ReferencedStudySequence) == 0
    assert "StudyDescription" not in ds  # not asked for


def test_answer_keeps_non_ascii_names() -> None:
    values = answer_values("PATIENT", ["PatientName"],
                           {"patient_id": "1", "patient_metadata": {"PatientName": "Müller^Zoë"}},
                           "ATRIUM")
    ds = pydicom.dcmread(io.BytesIO(answer_dataset(values)))

    assert str(ds.PatientName) == "Müller^Zoë"


def test_move_names_the_level_and_every_key_narrows() -> None:
    planned = move_statement(MoveIdentifiers("SERIES", {"StudyInstanceUID": "1.2",
                                                        "SeriesInstanceUID": "1.2.3\\1.2.4"}), ORG)

    assert planned is not None
    text = rendered([planned[0]])
    assert "s.study_instance_uid = ANY(%(StudyInstanceUID)s)" in text
    assert "se.series_instance_uid = ANY(%(SeriesInstanceUID)s)" in text
    assert planned[1]["SeriesInstanceUID"] == ["1.2.3", "1.2.4"]
    assert planned[1]["org"] == ORG


@pytest.mark.parametrize(("level", "keys", "expected"), [
    ("", {"StudyInstanceUID": "1.2"}, "STUDY"),
    ("", {"StudyInstanceUID": "1.2", "SOPInstanceUID": "1.2.3.4"}, "IMAGE"),
    ("INSTANCE", {"SOPInstanceUID": "1.2.3.4"}, "IMAGE"),
    ("STUDY", {"AccessionNumber": "A1"}, "STUDY"),
    ("STUDY", {"PatientID": "MRN"}, None),   # a study move must name a study
    ("STUDY", {"StudyInstanceUID": "*"}, None),  # never "everything"
    ("", {}, None),
])
def test_move_level(level: str, keys: dict[str, str], expected: str | None) -> None:
    identifiers = MoveIdentifiers(level, keys)

    assert identifiers.effective_level() == expected
    assert (move_statement(identifiers, ORG) is None) == (expected is None)


def test_without_get_turns_every_definition_form_into_one_refusing_get() -> None:
    assert without_get(["WS", "10.0.0.1", 104]) == {"AET": "WS", "Host": "10.0.0.1",
                                                    "Port": 104, "AllowGet": False}
    assert without_get({"AET": "WS", "AllowGet": True, "AllowFind": True}) == {
        "AET": "WS", "AllowGet": False, "AllowFind": True}
    assert without_get("garbage") == "garbage"


class _Modalities:
    def __init__(self, declared: dict[str, Any]) -> None:
        self.declared = declared
        self.puts: list[tuple[str, Any]] = []

    def get_json(self, path: str) -> Any:
        return self.declared

    def put_json(self, path: str, body: Any) -> Any:
        self.puts.append((path, body))


def test_lock_down_rewrites_only_modalities_that_allow_get() -> None:
    orthanc = _Modalities({"ws 1": {"AET": "WS1", "AllowGet": True},
                           "ws2": {"AET": "WS2", "AllowGet": False}})

    assert lock_down_get(orthanc) == ["ws 1"]
    assert orthanc.puts == [("/modalities/ws%201", {"AET": "WS1", "AllowGet": False})]
