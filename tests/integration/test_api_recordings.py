"""``/api/recordings`` against the real Orthanc: WFDB record 100 and an EDF file
uploaded as forms, JSON samples, windows across segment boundaries equal to the
readers' samples, binary answers, min/max decimation, events, lists, scope, soft
delete and bad inputs that leave nothing behind."""

from __future__ import annotations

import io
import struct
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyedflib
import pytest
import requests
import wfdb

from tests.integration.conftest import AtriumUnderTest

pytestmark = pytest.mark.integration

SIGNALS = Path("/work/shared/data/signals")
# Orthanc's HTTP server keeps multipart/form-data POSTs for itself (see MULTIPART_NOTE).
FORM = {"X-HTTP-Method-Override": "PUT"}


def unique(prefix: str = "R") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def upload_files(atrium: AtriumUnderTest, names: list[str], role: str = "clinician",
                 **fields: str) -> requests.Response:
    files = [("file", (name, (SIGNALS / name).read_bytes())) for name in names]
    return requests.post(f"{atrium.url}/api/recordings",
                         headers={**atrium.auth(role), **FORM}, files=files,
                         data={"recording_type": "ECG", **fields}, timeout=120)


def post_json(atrium: AtriumUnderTest, body: dict[str, Any], role: str = "clinician"
              ) -> requests.Response:
    return requests.post(f"{atrium.url}/api/recordings", headers=atrium.auth(role),
                         json=body, timeout=60)


def get(atrium: AtriumUnderTest, path: str, role: str = "clinician", **params: Any
        ) -> requests.Response:
    return requests.get(f"{atrium.url}{path}", headers=atrium.auth(role), params=params,
                        timeout=60)


def count_recordings(atrium: AtriumUnderTest) -> int:
    return int(atrium.scalar("SELECT count(*) FROM recordings"))


@pytest.fixture(scope="module")
def record_100(atrium: AtriumUnderTest) -> dict[str, Any]:
    answer = upload_files(atrium, ["100.hea", "100.dat", "100.atr"])
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def decode_binary(blob: bytes) -> dict[str, Any]:
    """The layout of docs/SIGNALS.md, "Binary answers"."""
    assert blob[:4] == b"ATRS"
    version, kind, count, rate, start, end = struct.unpack_from("<BBHddd", blob, 4)
    assert version == 1
    offset = 4 + struct.calcsize("<BBHddd")
    channels = []
    for _ in range(count):
        index, channel_rate, first, n, has_positions = struct.unpack_from("<HdqIB", blob, offset)
        offset += struct.calcsize("<HdqIB")
        entry: dict[str, Any] = {"index": index, "sampling_rate": channel_rate,
                                 "first_sample": first}
        if has_positions:
            entry["positions"] = np.frombuffer(blob, "<i8", n, offset).tolist()
            offset += 8 * n
        dtype = "<i4" if kind == 0 else "<f8"
        entry["samples"] = np.frombuffer(blob, dtype, n, offset).tolist()
        offset += np.dtype(dtype).itemsize * n
        channels.append(entry)
    assert offset == len(blob)
    return {"sampling_rate": rate, "start": start, "end": end, "channels": channels}


def test_a_wfdb_upload_answers_201_with_its_channels(
        atrium: AtriumUnderTest, record_100: dict[str, Any]) -> None:
    assert record_100["sampling_rate"] == 360
    assert record_100["number_of_channels"] == 2
    assert record_100["duration_seconds"] == pytest.approx(650000 / 360)
    channels = record_100["metadata"]["channels"]
    assert [c["name"] for c in channels] == ["MLII", "V5"]
    assert {"name", "units", "gain", "baseline", "adc_resolution"} <= set(channels[0])
    read = get(atrium, f"/api/recordings/{record_100['id']}")
    assert read.status_code == 200
    assert read.json()["id"] == record_100["id"]


def test_a_digital_window_across_a_segment_boundary_equals_wfdb(
        atrium: AtriumUnderTest, record_100: dict[str, Any]) -> None:
    reference = wfdb.rdrecord(str(SIGNALS / "100"), physical=False)
    lo, hi = int(9.5 * 360), int(10.5 * 360)
    answer = get(atrium, f"/api/recordings/{record_100['id']}/signal", start=9.5, end=10.5,
                 units="digital")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [c["name"] for c in body["channels"]] == ["MLII", "V5"]
    for channel in body["channels"]:
        assert channel["samples"] == reference.d_signal[lo:hi, channel["index"]].tolist()


def test_physical_values_equal_wfdbs_within_rounding(
        atrium: AtriumUnderTest, record_100: dict[str, Any]) -> None:
    reference = wfdb.rdrecord(str(SIGNALS / "100"), sampfrom=3600, sampto=3960)
    answer = get(atrium, f"/api/recordings/{record_100['id']}/signal", start=10, end=11,
                 channels="V5").json()
    assert [c["index"] for c in answer["channels"]] == [1]
    assert answer["channels"][0]["units"] == "mV"
    assert np.allclose(answer["channels"][0]["samples"], reference.p_signal[:, 1], atol=1e-6)


def test_the_binary_answer_decodes_to_the_json_numbers(
        atrium: AtriumUnderTest, record_100: dict[str, Any]) -> None:
    path = f"/api/recordings/{record_100['id']}/signal"
    for units in ("digital", "physical"):
        as_json = get(atrium, path, start=5, end=12.25, units=units, max_points=100).json()
        binary = get(atrium, path, start=5, end=12.25, units=units, max_points=100,
                     format="binary")
        assert binary.headers["Content-Type"].startswith("application/octet-stream")
        decoded = decode_binary(binary.content)
        assert decoded["sampling_rate"] == as_json["sampling_rate"]
        for mine, theirs in zip(decoded["channels"], as_json["channels"], strict=True):
            assert mine["samples"] == theirs["samples"]
            assert mine["positions"] == theirs["positions"]


def test_max_points_keeps_each_buckets_minimum_and_maximum(
        atrium: AtriumUnderTest, record_100: dict[str, Any]) -> None:
    reference = wfdb.rdrecord(str(SIGNALS / "100"), physical=False, sampto=360 * 60)
    answer = get(atrium, f"/api/recordings/{record_100['id']}/signal", end=60,
                 units="digital", channels="0", max_points=200).json()
    channel = answer["channels"][0]
    assert len(channel["samples"]) <= 200
    full = reference.d_signal[:, 0]
    edges = (np.arange(101) * full.size) // 100
    kept = dict(zip(channel["positions"], channel["samples"], strict=True))
    assert all(full[p] == v for p, v in kept.items())
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        in_bucket = [v for p, v in kept.items() if a <= p < b]
        assert min(in_bucket) == full[a:b].min() and max(in_bucket) == full[a:b].max()


def test_events_come_from_the_annotation_file(
        atrium: AtriumUnderTest, record_100: dict[str, Any]) -> None:
    reference = wfdb.rdann(str(SIGNALS / "100"), "atr")
    answer = get(atrium, f"/api/recordings/{record_100['id']}/events")
    assert answer.status_code == 200
    items = answer.json()["items"]
    assert [e["sample"] for e in items] == reference.sample.tolist()
    early = get(atrium, f"/api/recordings/{record_100['id']}/events", start=10, end=60,
                label="N").json()["items"]
    expected = [int(s) for s, label in zip(reference.sample, reference.symbol, strict=True)
                if label == "N" and 10 <= s / 360 < 60]
    assert expected and [e["sample"] for e in early] == expected


def test_an_edf_upload_reads_back_its_digital_samples(atrium: AtriumUnderTest,
                                                      tmp_path: Path) -> None:
    answer = upload_files(atrium, ["test_generator_2.edf"], recording_type="EEG")
    assert answer.status_code == 201, answer.text
    created = answer.json()
    data = (SIGNALS / "test_generator_2.edf").read_bytes()
    header = int(data[184:192])
    copy = tmp_path / "copy.edf"  # edflib refuses the file's non-ASCII unit '\xb0'
    copy.write_bytes(data[:header].replace(b"\xb0", b"d") + data[header:])
    body = get(atrium, f"/api/recordings/{created['id']}/signal", start=8, end=12,
               units="digital").json()
    with pyedflib.EdfReader(str(copy)) as reader:
        assert len(body["channels"]) == reader.signals_in_file
        for channel in body["channels"]:
            rate = reader.getSampleFrequency(channel["index"])
            expected = reader.readSignal(channel["index"], int(8 * rate), int(4 * rate),
                                         digital=True)
            assert channel["samples"] == expected.tolist()


def test_json_samples_make_a_recording(atrium: AtriumUnderTest) -> None:
    samples = [0, 5, -7, 2**20, -(2**20), 3]
    answer = post_json(atrium, {"recording_type": "ECG", "sampling_rate": 2,
                                "recording_date": "2024-05-01T08:30:00Z",
                                "metadata": {"device": "test"},
                                "channels": [{"name": "I", "units": "mV", "gain": 200,
                                              "baseline": 10, "samples": samples}]})
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert answer.headers["Location"] == f"/api/recordings/{created['id']}"
    assert created["duration_seconds"] == 3 and created["metadata"]["device"] == "test"
    body = get(atrium, f"/api/recordings/{created['id']}/signal").json()
    assert body["channels"][0]["samples"] == [(s - 10) / 200 for s in samples]


@pytest.mark.parametrize("body", [
    {"recording_type": "ECG", "sampling_rate": 0, "channels": [{"name": "I", "samples": [1]}]},
    {"recording_type": "ECG", "sampling_rate": 100,
     "channels": [{"name": "I", "samples": [1, 2.5]}]},
    {"recording_type": "ECG", "sampling_rate": 100,
     "channels": [{"name": "I", "gain": 0, "samples": [1, 2]}]},
], ids=["sampling-rate-0", "non-integer-sample", "gain-0"])
def test_bad_json_samples_are_refused_and_nothing_stored(
        atrium: AtriumUnderTest, body: dict[str, Any]) -> None:
    before = count_recordings(atrium)
    answer = post_json(atrium, body)
    assert answer.status_code == 400
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert count_recordings(atrium) == before


def test_a_header_without_its_data_file_is_refused(atrium: AtriumUnderTest) -> None:
    before = count_recordings(atrium)
    answer = upload_files(atrium, ["100.hea"])
    assert answer.status_code == 400
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert count_recordings(atrium) == before


def test_end_before_start_is_refused(atrium: AtriumUnderTest,
                                     record_100: dict[str, Any]) -> None:
    answer = get(atrium, f"/api/recordings/{record_100['id']}/signal", start=5, end=4)
    assert answer.status_code == 400
    assert answer.headers["Content-Type"].startswith("application/problem+json")


def test_list_filters_pages_and_soft_delete(atrium: AtriumUnderTest) -> None:
    kind = unique("T")[:50]
    ids = [post_json(atrium, {"recording_type": kind, "sampling_rate": 10, "channels": [
        {"name": "x", "samples": [i, i + 1]}]}).json()["id"] for i in range(3)]
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"recording_type": kind, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = get(atrium, "/api/recordings", **params).json()
        seen += [r["id"] for r in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert seen == ids[::-1]
    assert get(atrium, "/api/recordings", recording_type=kind, sampling_rate=11
               ).json()["items"] == []
    deleted = requests.delete(f"{atrium.url}/api/recordings/{ids[0]}", headers=atrium.auth(),
                              timeout=30)
    assert deleted.status_code == 204
    assert get(atrium, f"/api/recordings/{ids[0]}").status_code == 404
    assert get(atrium, f"/api/recordings/{ids[0]}/signal").status_code == 404
    listed = [r["id"] for r in get(atrium, "/api/recordings", recording_type=kind
                                   ).json()["items"]]
    assert listed == ids[:0:-1]


def test_researchers_see_recordings_of_deidentified_patients_only(
        atrium: AtriumUnderTest) -> None:
    patients = {}
    for deidentified in (False, True):
        answer = requests.post(f"{atrium.url}/api/patients", headers=atrium.auth(), timeout=30,
                               json={"mrn": unique("MRN"), "is_deidentified": deidentified})
        patients[deidentified] = answer.json()["id"]
    made = {}
    for deidentified, patient in patients.items():
        made[deidentified] = post_json(atrium, {
            "recording_type": "ECG", "sampling_rate": 10, "patient_id": patient,
            "channels": [{"name": "x", "samples": [1, 2, 3]}]}).json()["id"]
    for suffix in ("", "/signal", "/events"):
        assert get(atrium, f"/api/recordings/{made[False]}{suffix}",
                   "researcher").status_code == 404
        assert get(atrium, f"/api/recordings/{made[True]}{suffix}",
                   "researcher").status_code == 200


def test_a_wfdb_export_reads_back_with_the_same_digital_samples(
        atrium: AtriumUnderTest, record_100: dict[str, Any], tmp_path: Path) -> None:
    answer = get(atrium, f"/api/recordings/{record_100['id']}/export", format="wfdb")
    assert answer.status_code == 200, answer.text
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path)
    header = next(n for n in names if n.endswith(".hea"))
    exported = wfdb.rdrecord(str(tmp_path / header[:-4]), physical=False)
    reference = wfdb.rdrecord(str(SIGNALS / "100"), physical=False)
    np.testing.assert_array_equal(exported.d_signal, reference.d_signal)
    annotations = wfdb.rdann(str(tmp_path / header[:-4]), "atr")
    assert annotations.sample.tolist() == wfdb.rdann(str(SIGNALS / "100"), "atr"
                                                     ).sample.tolist()


def test_an_edf_export_reads_back_with_the_same_digital_samples(
        atrium: AtriumUnderTest, tmp_path: Path) -> None:
    created = upload_files(atrium, ["test_generator_2.edf"], recording_type="EEG").json()
    answer = get(atrium, f"/api/recordings/{created['id']}/export")
    assert answer.status_code == 200, answer.text
    data = answer.content
    header = int(data[184:192])
    exported = tmp_path / "exported.edf"  # edflib refuses the non-ASCII unit '\xb0'
    exported.write_bytes(data[:header].replace(b"\xb0", b"d") + data[header:])
    original = (SIGNALS / "test_generator_2.edf").read_bytes()
    original_header = int(original[184:192])
    copy = tmp_path / "original.edf"
    copy.write_bytes(original[:original_header].replace(b"\xb0", b"d")
                     + original[original_header:])
    with pyedflib.EdfReader(str(exported)) as mine, pyedflib.EdfReader(str(copy)) as theirs:
        assert mine.signals_in_file == theirs.signals_in_file
        for index in range(theirs.signals_in_file):
            expected = theirs.readSignal(index, digital=True)
            np.testing.assert_array_equal(
                mine.readSignal(index, digital=True)[:expected.size], expected)


def resumable(atrium: AtriumUnderTest, name: str) -> str:
    """A complete upload of /api/uploads holding the shared file ``name``."""
    blob = (SIGNALS / name).read_bytes()
    auth = atrium.auth("clinician")
    upload_id = requests.post(f"{atrium.url}/api/uploads", headers=auth, timeout=30, json={
        "filename": name, "size": len(blob)}).json()["id"]
    answer = requests.put(f"{atrium.url}/api/uploads/{upload_id}", data=blob, timeout=60,
                          headers={**auth, "Content-Type": "application/octet-stream",
                                   "Content-Range": f"bytes 0-{len(blob) - 1}/{len(blob)}"})
    assert answer.status_code == 200 and answer.json()["missing"] == [], answer.text
    return str(upload_id)


def test_completed_uploads_make_a_recording(atrium: AtriumUnderTest) -> None:
    ids = [resumable(atrium, name) for name in ("100.hea", "100.dat")]
    incomplete = post_json(atrium, {"recording_type": "ECG", "upload_ids": ids[:1]})
    assert incomplete.status_code == 400  # a header without its .dat; the upload stays
    answer = post_json(atrium, {"recording_type": "ECG", "upload_ids": ids})
    assert answer.status_code == 201, answer.text
    body = get(atrium, f"/api/recordings/{answer.json()['id']}/signal", start=9, end=11,
               units="digital").json()
    reference = wfdb.rdrecord(str(SIGNALS / "100"), physical=False, sampfrom=9 * 360,
                              sampto=11 * 360)
    for channel in body["channels"]:
        assert channel["samples"] == reference.d_signal[:, channel["index"]].tolist()
    again = post_json(atrium, {"recording_type": "ECG", "upload_ids": ids})
    assert again.status_code == 409
