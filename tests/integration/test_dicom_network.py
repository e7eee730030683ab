"""C-FIND, C-MOVE and C-GET against a real Orthanc with Atrium, with dcmtk's
``findscu``, ``movescu``, ``getscu`` from two organizations' workstations and a peer
Orthanc knows but Atrium does not map; ``storescp`` is the move destination."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from atrium.devenv import wait_until
from tests.conftest import free_port
from tests.integration.conftest import AtriumUnderTest, _start
from tests.support.dicomgen import StudySpec, make_instance, write_files

pytestmark = pytest.mark.integration

NORTH, SOUTH, STRANGER, DEST = "NORTH_WS", "SOUTH_WS", "STRANGER_WS", "DEST_SCP"
AETS = {NORTH: "Radiology North", SOUTH: "Radiology South", "MAPPED_AE": "Radiology North"}


@dataclass
class Study:
    uid: str
    patient_id: str
    series_uids: list[str]
    sop_uids: list[str]


@dataclass
class Network:
    atrium: AtriumUnderTest
    dest_dir: Path
    work: Path
    north_a: Study  # CT, 2024-01-31
    north_b: Study  # MR, 2023-06-15
    south: Study    # CT, 2024-01-31


def _study(spec: StudySpec, study_date: str) -> tuple[Study, list[bytes]]:
    blobs, series_uids, sops = [], [], []
    for series_number in (1, 2):
        series_uid = generate_uid()
        series_uids.append(series_uid)
        for n in (1, 2):
            sop = generate_uid()
            sops.append(sop)
            blobs.append(make_instance(spec, series_uid, series_number, n, sop,
                                       StudyDate=study_date))
    return Study(spec.study_uid, spec.patient_id, series_uids, sops), blobs


def _store(atrium: AtriumUnderTest, calling_aet: str, files: list[Path]) -> None:
    done = subprocess.run(["storescu", "-aet", calling_aet, "-aec", "ATRIUM", "127.0.0.1",
                           str(atrium.dicom_port), *map(str, files)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def net(workspace: Path, pg_cluster: object, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Network]:
    work = tmp_path_factory.mktemp("dicomnet")
    dest_dir = work / "received"
    dest_dir.mkdir()
    dest_port = free_port()
    modalities = {
        "north": [NORTH, "127.0.0.1", free_port()],
        "south": {"AET": SOUTH, "Host": "127.0.0.1", "Port": free_port()},
        "stranger": [STRANGER, "127.0.0.1", free_port()],
        "dest": [DEST, "127.0.0.1", dest_port],
    }
    atrium = _start(workspace, pg_cluster, pg_cluster,  # type: ignore[arg-type]
                    orthanc_settings={"DicomModalities": modalities},
                    AetOrganizations=AETS)
    scp = subprocess.Popen(["storescp", "-aet", DEST, "-od", str(dest_dir), str(dest_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        uid = generate_uid().split(".")[-1][-6:]
        north_a, a_blobs = _study(StudySpec(patient_id=f"N-{uid}", patient_name="North^Alice",
                                            accession=f"NA{uid}", modality="CT"), "20240131")
        north_b, b_blobs = _study(StudySpec(patient_id=f"N-{uid}", patient_name="North^Alice",
                                            accession=f"NB{uid}", modality="MR"), "20230615")
        south, s_blobs = _study(StudySpec(patient_id=f"S-{uid}", patient_name="South^Bob",
                                          accession=f"SC{uid}", modality="CT"), "20240131")
        _store(atrium, NORTH, write_files(work / "north", a_blobs + b_blobs))
        _store(atrium, SOUTH, write_files(work / "south", s_blobs))
        atrium.wait_mirrored(north_a.sop_uids + north_b.sop_uids + south.sop_uids)
        yield Network(atrium, dest_dir, work, north_a, north_b, south)
    finally:
        scp.terminate()
        scp.wait(timeout=10)
        atrium.orthanc.stop()


def findscu(net: Network, calling_aet: str, level: str, keys: dict[str, str],
            root: str = "-S") -> tuple[list[pydicom.Dataset], subprocess.CompletedProcess[str]]:
    out = net.work / f"find-{generate_uid()[-12:]}"
    out.mkdir()
    args = ["findscu", root, "-aet", calling_aet, "-aec", "ATRIUM", "-X", "-od", str(out),
            "-k", f"QueryRetrieveLevel={level}"]
    for key, value in keys.items():
        args += ["-k", f"{key}={value}" if value else key]
    done = subprocess.run([*args, "127.0.0.1", str(net.atrium.dicom_port)],
                          capture_output=True, text=True, timeout=60, check=False)
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], done


def values(answers: list[pydicom.Dataset], keyword: str) -> set[str]:
    return {str(a.get(keyword, "")) for a in answers}


def received(net: Network) -> set[str]:
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
            for p in net.dest_dir.iterdir() if p.is_file()}


def movescu(net: Network, calling_aet: str, keys: dict[str, str], target: str = DEST
            ) -> subprocess.CompletedProcess[str]:
    args = ["movescu", "-S", "-v", "-aet", calling_aet, "-aec", "ATRIUM", "-aem", target]
    for key, value in keys.items():
        args += ["-k", f"{key}={value}"]
    return subprocess.run([*args, "127.0.0.1", str(net.atrium.dicom_port)],
                          capture_output=True, text=True, timeout=120, check=False)


# ---------------------------------------------------------------- C-FIND


def test_study_find_answers_each_organization_with_its_own_studies(net: Network) -> None:
    north, _ = findscu(net, NORTH, "STUDY", {"StudyInstanceUID": "", "PatientName": "",
                                             "ModalitiesInStudy": ""})
    south, _ = findscu(net, SOUTH, "STUDY", {"StudyInstanceUID": "", "PatientName": ""})

    assert values(north, "StudyInstanceUID") == {net.north_a.uid, net.north_b.uid}
    assert values(north, "PatientName") == {"North^Alice"}
    assert values(north, "ModalitiesInStudy") == {"CT", "MR"}
    assert values(south, "StudyInstanceUID") == {net.south.uid}


def test_patient_series_and_image_levels_are_scoped(net: Network) -> None:
    patients, _ = findscu(net, NORTH, "PATIENT", {"PatientID": "", "PatientName": "",
                                                  "NumberOfPatientRelatedStudies": ""}, "-P")
    series, _ = findscu(net, NORTH, "SERIES", {"StudyInstanceUID": net.north_a.uid,
                                               "SeriesInstanceUID": "", "Modality": ""})
    images, _ = findscu(net, NORTH, "IMAGE", {"StudyInstanceUID": net.north_a.uid,
                                              "SeriesInstanceUID": net.north_a.series_uids[0],
                                              "SOPInstanceUID": ""})
    foreign_series, _ = findscu(net, NORTH, "SERIES", {"StudyInstanceUID": net.south.uid,
                                                       "SeriesInstanceUID": ""})
    foreign_images, _ = findscu(net, NORTH, "IMAGE", {"SOPInstanceUID": net.south.sop_uids[0]})

    assert values(patients, "PatientID") == {net.north_a.patient_id}
    assert values(patients, "NumberOfPatientRelatedStudies") == {"2"}
    assert values(series, "SeriesInstanceUID") == set(net.north_a.series_uids)
    assert values(series, "Modality") == {"CT"}
    assert values(images, "SOPInstanceUID") == set(net.north_a.sop_uids[:2])
    assert foreign_series == [] and foreign_images == []


def test_wildcards_ranges_and_uid_lists_match_as_ps34_says(net: Network) -> None:
    both = {net.north_a.uid, net.north_b.uid}
    by_name, _ = findscu(net, NORTH, "STUDY", {"StudyInstanceUID": "", "PatientName": "north*"})
    by_mark, _ = findscu(net, NORTH, "STUDY", {"StudyInstanceUID": "", "PatientName": "?orth^Al*"})
    no_name, _ = findscu(net, NORTH, "STUDY", {"StudyInstanceUID": "", "PatientName": "South*"})
    in_2024, _ = findscu(net, NORTH, "STUDY", {"StudyInstanceUID": "",
                                               "StudyDate": "20240101-20241231"})
    until_2023, _ = findscu(net, NORTH, "STUDY", {"StudyInstanceUID": "",
                                                  "StudyDate": "-20231231"})
    uid_list, _ = findscu(net, NORTH, "STUDY", {
        "StudyInstanceUID": f"{net.north_a.uid}\\{net.south.uid}"})
    by_modality, _ = findscu(net, NORTH, "STUDY", {"StudyInstanceUID": "",
                                                   "ModalitiesInStudy": "MR"})

    assert values(by_name, "StudyInstanceUID") == both
    assert values(by_mark, "StudyInstanceUID") == both
    assert no_name == []
    assert values(in_2024, "StudyInstanceUID") == {net.north_a.uid}
    assert values(until_2023, "StudyInstanceUID") == {net.north_b.uid}
    assert values(uid_list, "StudyInstanceUID") == {net.north_a.uid}
    assert values(by_modality, "StudyInstanceUID") == {net.north_b.uid}


def test_unmapped_peer_finds_nothing_and_is_on_record(net: Network) -> None:
    answers, done = findscu(net, STRANGER, "STUDY", {"StudyInstanceUID": ""})
    patients, _ = findscu(net, STRANGER, "PATIENT", {"PatientID": ""}, "-P")

    assert done.returncode == 0, done.stderr
    assert answers == [] and patients == []
    refused = net.atrium.scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'dicom.c-find' "
        "AND details->>'calling_aet' = %s AND details->>'status' = 'refused'", (STRANGER,))
    assert refused >= 2


def test_answered_find_is_audited_with_phi_and_organization(net: Network) -> None:
    findscu(net, SOUTH, "STUDY", {"StudyInstanceUID": net.south.uid})

    row = net.atrium.sql(
        "SELECT a.phi_accessed, o.name, a.details->>'answers' FROM audit_log a "
        "JOIN organizations o ON o.id = a.organization_id WHERE a.action = 'dicom.c-find' "
        "AND a.details->>'calling_aet' = %s ORDER BY a.seq DESC LIMIT 1", (SOUTH,))
    assert row == [(True, "Radiology South", "1")]


# ---------------------------------------------------------------- C-MOVE


def test_move_sends_the_callers_study_to_the_destination(net: Network) -> None:
    done = movescu(net, NORTH, {"QueryRetrieveLevel": "STUDY",
                                "StudyInstanceUID": net.north_a.uid})

    assert "Final Move Response (Success)" in done.stderr, done.stderr
    wait_until(lambda: set(net.north_a.sop_uids) <= received(net), 30,
               what="the moved study at the destination")


def test_move_of_another_organizations_study_moves_nothing(net: Network) -> None:
    series_move = movescu(net, NORTH, {"QueryRetrieveLevel": "SERIES",
                                       "StudyInstanceUID": net.south.uid,
                                       "SeriesInstanceUID": net.south.series_uids[0]})
    study_move = movescu(net, NORTH, {"QueryRetrieveLevel": "STUDY",
                                      "StudyInstanceUID": net.south.uid})
    patient_move = movescu(net, NORTH, {"QueryRetrieveLevel": "PATIENT",
                                        "PatientID": net.south.patient_id})

    for done in (series_move, study_move, patient_move):
        # as for a study that does not exist: nothing tells the peer it does
        assert "Final Move Response (Success)" in done.stderr, done.stderr
    # the moves are synchronous: anything sent had arrived before movescu returned
    assert not set(net.south.sop_uids) & received(net)
    row = net.atrium.sql(
        "SELECT details->>'instances', phi_accessed FROM audit_log WHERE action = "
        "'dicom.c-move' AND details->>'calling_aet' = %s ORDER BY seq DESC LIMIT 1", (NORTH,))
    assert row == [("0", False)]


def test_move_from_an_unmapped_peer_fails_and_sends_nothing(net: Network) -> None:
    done = movescu(net, STRANGER, {"QueryRetrieveLevel": "STUDY",
                                   "StudyInstanceUID": net.north_b.uid})

    # orthanc-python 4.0 counts a plugin's move as one sub-operation: its failure
    # reaches the peer as "complete, one or more failures"
    assert "OneOrMoreFailures" in done.stderr, done.stderr
    assert not set(net.north_b.sop_uids) & received(net)


def test_move_to_an_unknown_destination_fails(net: Network) -> None:
    done = movescu(net, NORTH, {"QueryRetrieveLevel": "STUDY",
                                "StudyInstanceUID": net.north_b.uid}, target="NOWHERE")

    # orthanc-python 4.0 counts a plugin's move as one sub-operation: its failure
    # reaches the peer as "complete, one or more failures"
    assert "OneOrMoreFailures" in done.stderr, done.stderr
    assert not set(net.north_b.sop_uids) & received(net)


# ---------------------------------------------------------------- C-GET


def test_get_is_refused_to_every_peer(net: Network) -> None:
    def locked() -> bool:
        declared = net.atrium.api.get_json("/modalities?expand")
        return all(m["AllowGet"] is False for m in declared.values())

    wait_until(locked, 30, what="C-GET refused on every declared modality")
    modalities = net.atrium.api.get_json("/modalities?expand")
    out = net.work / "get-north"
    out.mkdir()
    done = subprocess.run(["getscu", "-S", "-v", "-aet", NORTH, "-aec", "ATRIUM", "-od", str(out),
                           "-k", "QueryRetrieveLevel=STUDY",
                           "-k", f"StudyInstanceUID={net.north_a.uid}",
                           "127.0.0.1", str(net.atrium.dicom_port)],
                          capture_output=True, text=True, timeout=60, check=False)

    assert {name: m["AllowGet"] for name, m in modalities.items()} == {
        "north": False, "south": False, "stranger": False, "dest": False}
    assert list(out.iterdir()) == [], done.stderr


def test_modality_declared_at_run_time_cannot_get(net: Network) -> None:
    put = requests.put(f"{net.atrium.url}/modalities/late", timeout=30,
                       headers=net.atrium.internal_headers,
                       json={"AET": "LATE_WS", "Host": "127.0.0.1", "Port": 1,
                             "AllowGet": True, "AllowFind": True})
    short = requests.put(f"{net.atrium.url}/modalities/later", timeout=30,
                         headers=net.atrium.internal_headers,
                         json=["LATER_WS", "127.0.0.1", 2])

    assert put.status_code == 200, put.text
    assert short.status_code == 200, short.text
    modalities = net.atrium.api.get_json("/modalities?expand")
    assert modalities["late"]["AllowGet"] is False
    assert modalities["late"]["AllowFind"] is True
    assert modalities["later"]["AllowGet"] is False
    requests.delete(f"{net.atrium.url}/modalities/late", headers=net.atrium.internal_headers,
                    timeout=30)
    requests.delete(f"{net.atrium.url}/modalities/later", headers=net.atrium.internal_headers,
                    timeout=30)
