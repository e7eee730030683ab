"""DICOM waveform instances stored in Orthanc become recordings: pydicom's 12-lead
ECG sent by C-STORE reads back through ``/api/recordings`` sample for sample as
pydicom reads it, once however often it is stored or Orthanc restarts, linked to
its instance, study and patient, gone with its instance and back with it, seen
only by its organization; a damaged waveform is refused with its reason, and
nothing else suffers."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.waveforms.numpy_handler import multiplex_array

from atrium.devenv import wait_until
from tests.integration.conftest import AtriumUnderTest
from tests.integration.test_api_resources import MAPPED_ORGANIZATION, Client, unique

pytestmark = pytest.mark.integration

ECG_CLASS = "1.2.840.10008.5.1.4.1.1.9.1.1"


def ecg(patient_id: str | None = None) -> Dataset:
    """pydicom's 12-lead ECG (RHYTHM 10 s and MEDIAN BEAT 1.2 s, 12 leads each, 1 kHz)
    with UIDs of its own, so that tests sharing one Orthanc do not meet."""
    path = get_testdata_file("waveform_ecg.dcm")
    assert isinstance(path, str), "pydicom's test files are installed with pydicom"
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = patient_id or unique("ECG-")
    return ds


def blob_of(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def storescu(atrium: AtriumUnderTest, path: Path, calling_aet: str = "MAPPED_AE") -> None:
    """C-STORE from ``calling_aet`` (organization "Radiology North")."""
    subprocess.run(["storescu", "-aet", calling_aet, "-aec", "ATRIUM", "127.0.0.1",
                    str(atrium.dicom_port), str(path)], check=True, timeout=120,
                   capture_output=True)


def recordings_of(atrium: AtriumUnderTest, sop_uid: str, live: bool = True) -> list[Any]:
    return [row[0] for row in atrium.sql(
        "SELECT id FROM recordings WHERE metadata->>'sop_instance_uid' = %s "
        "AND (deleted_at IS NULL) = %s ORDER BY (metadata->>'waveform_part')::int",
        (sop_uid, live))]


def wait_recordings(atrium: AtriumUnderTest, sop_uid: str, count: int = 2,
                    timeout: float = 60) -> list[str]:
    wait_until(lambda: len(recordings_of(atrium, sop_uid)) == count, timeout,
               what=f"{count} recordings of waveform {sop_uid}")
    return [str(r) for r in recordings_of(atrium, sop_uid)]


def outcome(atrium: AtriumUnderTest, sop_uid: str) -> tuple[str, str] | None:
    rows = atrium.sql("SELECT outcome, coalesce(detail, '') FROM waveform_instances "
                      "WHERE sop_instance_uid = %s", (sop_uid,))
    return (str(rows[0][0]), str(rows[0][1])) if rows else None


def caught_up(atrium: AtriumUnderTest, sop_uid: str) -> bool:
    """Whether the registry has looked at the instance's current mirror row."""
    return bool(atrium.scalar(
        "SELECT w.instance_updated_at = i.updated_at FROM waveform_instances w "
        "JOIN instances i ON i.id = w.instance_id WHERE i.sop_instance_uid = %s", (sop_uid,)))


@pytest.fixture(scope="module")
def stored_ecg(atrium: AtriumUnderTest, tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, Any]:
    ds = ecg()
    path = tmp_path_factory.mktemp("waveforms") / "ecg.dcm"
    path.write_bytes(blob_of(ds))
    storescu(atrium, path)
    ids = wait_recordings(atrium, str(ds.SOPInstanceUID))
    return {"ds": ds, "ids": ids, "path": path,
            "client": Client(atrium, "clinician", MAPPED_ORGANIZATION)}


def test_an_ecg_stored_by_c_store_reads_back_as_pydicom_reads_it(
        atrium: AtriumUnderTest, stored_ecg: dict[str, Any]) -> None:
    ds, client = stored_ecg["ds"], stored_ecg["client"]
    assert len(stored_ecg["ids"]) == len(ds.WaveformSequence) == 2  # spans 10 s and 1.2 s
    for group, recording_id in enumerate(stored_ecg["ids"]):
        raw = multiplex_array(ds, group, as_raw=True)
        physical = ds.waveform_array(group)
        digital = client.get(f"/api/recordings/{recording_id}/signal", units="digital",
                             format="json")
        assert digital.status_code == 200, digital.text
        channels = digital.json()["channels"]
        assert len(channels) == raw.shape[1] == 12
        for index, channel in enumerate(channels):
            assert channel["samples"] == raw[:, index].tolist()
            assert channel["sampling_rate"] == 1000
        answer = client.get(f"/api/recordings/{recording_id}/signal", units="physical",
                            format="json")
        assert answer.status_code == 200, answer.text
        values = np.array([c["samples"] for c in answer.json()["channels"]]).T
        np.testing.assert_allclose(values, physical, rtol=1e-12, atol=1e-9)


def test_the_recordings_are_linked_to_instance_study_and_patient(
        atrium: AtriumUnderTest, stored_ecg: dict[str, Any]) -> None:
    ds, client = stored_ecg["ds"], stored_ecg["client"]
    sop_uid = str(ds.SOPInstanceUID)
    study_id, patient_id, organization = atrium.sql(
        "SELECT s.id, s.patient_id, o.name FROM studies s JOIN organizations o "
        "ON o.id = s.organization_id WHERE s.study_instance_uid = %s",
        (str(ds.StudyInstanceUID),))[0]
    instance_id, orthanc_id = atrium.sql(
        "SELECT id, orthanc_id FROM instances WHERE sop_instance_uid = %s", (sop_uid,))[0]
    assert organization == MAPPED_ORGANIZATION
    for part, recording_id in enumerate(stored_ecg["ids"]):
        answer = client.get(f"/api/recordings/{recording_id}")
        assert answer.status_code == 200, answer.text
        found = answer.json()
        assert found["recording_type"] == "ECG"
        assert found["patient_id"] == str(patient_id)
        assert found["recording_date"].startswith("2013-01-25T10:59:19")
        group = ds.WaveformSequence[part]
        assert found["duration_seconds"] == group.NumberOfWaveformSamples / 1000
        meta = found["metadata"]
        assert {k: meta[k] for k in ("sop_instance_uid", "study_instance_uid",
                                     "series_instance_uid", "study_id", "instance_id",
                                     "orthanc_id", "sop_class_uid", "waveform_part",
                                     "waveform_parts", "multiplex_group_labels")} == {
            "sop_instance_uid": sop_uid, "study_instance_uid": str(ds.StudyInstanceUID),
            "series_instance_uid": str(ds.SeriesInstanceUID), "study_id": str(study_id),
            "instance_id": str(instance_id), "orthanc_id": orthanc_id,
            "sop_class_uid": ECG_CLASS, "waveform_part": part, "waveform_parts": 2,
            "multiplex_group_labels": [str(group.MultiplexGroupLabel)]}
        for index, channel in enumerate(meta["channels"]):
            definition = group.ChannelDefinitionSequence[index]
            assert channel["name"] == definition.ChannelSourceSequence[0].CodeMeaning
            assert channel["source"] == definition.ChannelSourceSequence[0].CodeMeaning
            assert channel["label"] == str(definition.get("ChannelLabel", ""))
            assert channel["multiplex_group"] == part and channel["channel_index"] == index
            assert channel["sensitivity"] == pytest.approx(float(definition.ChannelSensitivity))
            assert channel["sensitivity_units"] == \
                definition.ChannelSensitivityUnitsSequence[0].CodeValue
            assert channel["sensitivity_correction"] == pytest.approx(
                float(definition.ChannelSensitivityCorrectionFactor))
            assert channel["channel_baseline"] == pytest.approx(
                float(definition.ChannelBaseline))
            assert "filter_low_hz" in channel and "sample_skew_ms" in channel
    listed = client.items("/api/recordings", sop_instance_uid=sop_uid)
    assert sorted(r["id"] for r in listed) == sorted(stored_ecg["ids"])
    assert atrium.scalar("SELECT count(*) FROM audit_log WHERE action = "
                         "'recording.extract_dicom' AND resource_id = ANY(%s::uuid[])",
                         (stored_ecg["ids"],)) == 2


def test_another_organization_cannot_see_the_recordings(
        atrium: AtriumUnderTest, stored_ecg: dict[str, Any]) -> None:
    sop_uid = str(stored_ecg["ds"].SOPInstanceUID)
    for role in ("clinician", "admin"):
        stranger = Client(atrium, role, unique("Elsewhere "))
        for recording_id in stored_ecg["ids"]:
            assert stranger.get(f"/api/recordings/{recording_id}").status_code == 404
            assert stranger.get(f"/api/recordings/{recording_id}/signal",
                                units="digital").status_code == 404
        assert stranger.items("/api/recordings", sop_instance_uid=sop_uid) == []
    # Without PHI rights, not even in its own organization (the patient is identified).
    researcher = Client(atrium, "researcher", MAPPED_ORGANIZATION)
    assert researcher.get(f"/api/recordings/{stored_ecg['ids'][0]}").status_code == 404


def test_storing_again_or_restarting_keeps_the_same_recordings(
        atrium: AtriumUnderTest, tmp_path: Path) -> None:
    ds = ecg()
    sop_uid = str(ds.SOPInstanceUID)
    path = tmp_path / "ecg.dcm"
    path.write_bytes(blob_of(ds))
    storescu(atrium, path)
    first = wait_recordings(atrium, sop_uid)
    # The same file again, by another path: the mirror touches the row, nothing new.
    assert atrium.upload(path.read_bytes()).status_code == 200
    storescu(atrium, path)
    atrium.restart()
    atrium.wait_caught_up()
    wait_until(lambda: caught_up(atrium, sop_uid), 60, what="the registry to look again")
    assert recordings_of(atrium, sop_uid) and wait_recordings(atrium, sop_uid) == first
    assert recordings_of(atrium, sop_uid, live=False) == []
    assert atrium.scalar("SELECT count(*) FROM recordings WHERE metadata->>'sop_instance_uid' "
                         "= %s", (sop_uid,)) == 2
    assert outcome(atrium, sop_uid) == ("registered", "")


def test_deleting_the_instance_retires_its_recordings_and_storing_it_restores_them(
        atrium: AtriumUnderTest, tmp_path: Path) -> None:
    ds = ecg()
    sop_uid = str(ds.SOPInstanceUID)
    path = tmp_path / "ecg.dcm"
    path.write_bytes(blob_of(ds))
    storescu(atrium, path)
    ids = wait_recordings(atrium, sop_uid)
    client = Client(atrium, "clinician", MAPPED_ORGANIZATION)
    orthanc_id = atrium.scalar("SELECT orthanc_id FROM instances WHERE sop_instance_uid = %s",
                               (sop_uid,))
    assert requests.delete(f"{atrium.url}/instances/{orthanc_id}", timeout=30,
                           headers=atrium.internal_headers).status_code == 200
    wait_until(lambda: len(recordings_of(atrium, sop_uid, live=False)) == 2, 60,
               what="the recordings to be retired")
    for recording_id in ids:
        assert client.get(f"/api/recordings/{recording_id}").status_code == 404
    assert client.items("/api/recordings", sop_instance_uid=sop_uid) == []
    assert outcome(atrium, sop_uid) == ("gone", "the instance was deleted")
    assert atrium.scalar("SELECT count(*) FROM audit_log WHERE action = "
                         "'recording.retire_dicom' AND resource_id = ANY(%s::uuid[])",
                         (ids,)) == 2

    storescu(atrium, path)  # back: the same recordings, not new ones
    assert wait_recordings(atrium, sop_uid) == ids
    assert client.get(f"/api/recordings/{ids[0]}").status_code == 200


def test_a_truncated_waveform_fails_with_its_reason_and_nothing_else_suffers(
        atrium: AtriumUnderTest, tmp_path: Path) -> None:
    broken = ecg()
    group = broken.WaveformSequence[0]
    group.WaveformData = group.WaveformData[:len(group.WaveformData) // 2]
    broken_uid = str(broken.SOPInstanceUID)
    path = tmp_path / "broken.dcm"
    path.write_bytes(blob_of(broken))
    storescu(atrium, path, calling_aet="OTHER_AE")
    wait_until(lambda: outcome(atrium, broken_uid) is not None, 60,
               what="the registry to look at the broken waveform")
    state, detail = outcome(atrium, broken_uid) or ("", "")
    assert state == "failed"
    assert "truncated" in detail and "multiplex group 0" in detail
    assert recordings_of(atrium, broken_uid) == recordings_of(atrium, broken_uid, False) == []
    assert requests.get(f"{atrium.url}/api/health", timeout=10).status_code == 200
    wait_until(lambda: f"waveform.failed sop={broken_uid}"
               in atrium.orthanc.logfile.read_text(errors="replace"), 10,
               what="the failure in Orthanc's log")

    # The next waveform is extracted as ever; the broken one is not read again.
    fine = ecg()
    fine_path = tmp_path / "fine.dcm"
    fine_path.write_bytes(blob_of(fine))
    storescu(atrium, fine_path, calling_aet="OTHER_AE")
    assert len(wait_recordings(atrium, str(fine.SOPInstanceUID))) == 2
    assert atrium.scalar("SELECT attempts FROM waveform_instances WHERE sop_instance_uid = %s",
                         (broken_uid,)) == 1
