"""``/api/recordings`` against the real Orthanc: every shared record (WFDB 100 and
s0010_re, the EDF test generator with the EDF+ annotations of test_edfann) uploaded
as forms and read back bit-exactly — through ``signal`` and through ``export`` —
against wfdb and pyedflib; JSON samples, windows across segment boundaries, binary
and Arrow answers equal to the JSON one, min/max decimation, events, the size caps,
lists, scope, soft delete and bad inputs that leave nothing behind."""

from __future__ import annotations

import io
import json
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
from tests.unit.test_signal_answers import decode_arrow, decode_binary

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


def test_a_window_just_read_is_no_help_to_another_caller_or_after_a_deletion(
        atrium: AtriumUnderTest) -> None:
    # The signal route keeps what its scope lookup said for a moment; that must
    # never serve another organization, a caller without READ_PHI, or a deletion.
    patient = requests.post(f"{atrium.url}/api/patients", headers=atrium.auth(), timeout=30,
                            json={"mrn": unique("MRN"), "is_deidentified": False}).json()["id"]
    made = post_json(atrium, {"recording_type": "ECG", "sampling_rate": 10,
                              "patient_id": patient,
                              "channels": [{"name": "x", "samples": [1, 2, 3]}]}).json()["id"]
    routes = [f"/api/recordings/{made}/signal", f"/api/recordings/{made}/events"]
    for route in routes:
        assert get(atrium, route).status_code == 200
        assert get(atrium, route, "researcher").status_code == 404
        elsewhere = requests.get(f"{atrium.url}{route}", timeout=30,
                                 headers=atrium.auth("clinician", "Other Hospital"))
        assert elsewhere.status_code == 404
        assert get(atrium, route).status_code == 200
    deleted = requests.delete(f"{atrium.url}/api/recordings/{made}", headers=atrium.auth(),
                              timeout=30)
    assert deleted.status_code == 204
    for route in routes:
        assert get(atrium, route).status_code == 404


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


# --- every shared record, bit-exact through signal and export ----------------------

SHARED = {
    "100": ["100.hea", "100.dat", "100.atr"],
    "s0010_re": ["s0010_re.hea", "s0010_re.dat", "s0010_re.xyz"],
    "test_generator_2": ["test_generator_2.edf"],
    # test_edfann.edf holds annotations only: they join the signals of an EDF beside it.
    "test_edfann": ["test_generator_2.edf", "test_edfann.edf"],
}


def upload_blobs(atrium: AtriumUnderTest, files: dict[str, bytes]) -> requests.Response:
    return requests.post(f"{atrium.url}/api/recordings",
                         headers={**atrium.auth("clinician"), **FORM},
                         files=[("file", (name, blob)) for name, blob in files.items()],
                         data={"recording_type": "ECG"}, timeout=120)


def edflib_copy(data: bytes, path: Path) -> Path:
    """``data`` written to ``path`` with the non-ASCII unit '\\xb0' of the test
    generator replaced: edflib refuses it."""
    header = int(data[184:192])
    path.write_bytes(data[:header].replace(b"\xb0", b"d") + data[header:])
    return path


def reference(record: str, directory: Path) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Per channel, as the reference readers give it: (digital samples, physical
    samples, the physical size of one digital step)."""
    if SHARED[record][0].endswith(".hea"):
        path = str(SIGNALS / record)
        digital = wfdb.rdrecord(path, physical=False)
        physical = wfdb.rdrecord(path)
        return [(digital.d_signal[:, i], physical.p_signal[:, i], 1 / digital.adc_gain[i])
                for i in range(digital.n_sig)]
    copy = edflib_copy((SIGNALS / "test_generator_2.edf").read_bytes(),
                       directory / f"{record}-reference.edf")
    with pyedflib.EdfReader(str(copy)) as reader:
        out = []
        for i in range(reader.signals_in_file):
            step = ((reader.getPhysicalMaximum(i) - reader.getPhysicalMinimum(i))
                    / (reader.getDigitalMaximum(i) - reader.getDigitalMinimum(i)))
            out.append((reader.readSignal(i, digital=True), reader.readSignal(i), step))
        return out


@pytest.fixture(scope="module")
def shared(atrium: AtriumUnderTest, record_100: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every shared record, uploaded once: record → the created recording."""
    created = {"100": record_100}
    for record, names in SHARED.items():
        if record not in created:
            answer = upload_files(atrium, names)
            assert answer.status_code == 201, (record, answer.text)
            created[record] = answer.json()
    return created


@pytest.mark.parametrize("record", SHARED)
def test_every_shared_record_reads_back_bit_exactly_through_signal(
        atrium: AtriumUnderTest, shared: dict[str, dict[str, Any]], record: str,
        tmp_path: Path) -> None:
    expected = reference(record, tmp_path)
    path = f"/api/recordings/{shared[record]['id']}/signal"
    digital = get(atrium, path, units="digital")
    assert digital.status_code == 200, digital.text
    channels = digital.json()["channels"]
    assert [c["index"] for c in channels] == list(range(len(expected)))
    for channel, (samples, _, _) in zip(channels, expected, strict=True):
        assert channel["first_sample"] == 0
        np.testing.assert_array_equal(np.asarray(channel["samples"]), samples)
    physical = get(atrium, path).json()["channels"]
    for channel, (_, values, step) in zip(physical, expected, strict=True):
        # Within a millionth of one digital step of the reader's value.
        np.testing.assert_allclose(channel["samples"], values, rtol=0, atol=step * 1e-6)


def exported_digital(atrium: AtriumUnderTest, recording_id: str, export_format: str,
                     directory: Path) -> list[np.ndarray]:
    answer = get(atrium, f"/api/recordings/{recording_id}/export", format=export_format)
    assert answer.status_code == 200, answer.text
    if export_format == "edf":
        copy = edflib_copy(answer.content, directory / "exported.edf")
        with pyedflib.EdfReader(str(copy)) as reader:
            return [reader.readSignal(i, digital=True) for i in range(reader.signals_in_file)]
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        header = next(n for n in archive.namelist() if n.endswith(".hea"))
        archive.extractall(directory)
    record = wfdb.rdrecord(str(directory / header[:-4]), physical=False)
    return [record.d_signal[:, i] for i in range(record.n_sig)]


@pytest.mark.parametrize("export_format", ["edf", "wfdb"])
@pytest.mark.parametrize("record", SHARED)
def test_every_shared_record_reads_back_bit_exactly_through_export(
        atrium: AtriumUnderTest, shared: dict[str, dict[str, Any]], record: str,
        export_format: str, tmp_path: Path) -> None:
    expected = reference(record, tmp_path)
    exported = exported_digital(atrium, shared[record]["id"], export_format, tmp_path)
    assert len(exported) == len(expected)
    for mine, (samples, _, _) in zip(exported, expected, strict=True):
        # An EDF ends on a whole data record: the padding after the samples is not theirs.
        np.testing.assert_array_equal(mine[:samples.size], samples)
        assert mine.size == samples.size or export_format == "edf"


def test_the_events_of_test_edfann_equal_pyedflibs_annotations(
        atrium: AtriumUnderTest, shared: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    expected = []
    generator = edflib_copy((SIGNALS / "test_generator_2.edf").read_bytes(),
                            tmp_path / "generator.edf")
    for path in (generator, SIGNALS / "test_edfann.edf"):
        with pyedflib.EdfReader(str(path)) as reader:
            onsets, durations, texts = reader.readAnnotations()
        expected += [(float(o), float(d), str(t))
                     for o, d, t in zip(onsets, durations, texts, strict=True)]
    answer = get(atrium, f"/api/recordings/{shared['test_edfann']['id']}/events")
    assert answer.status_code == 200
    items = answer.json()["items"]
    # pyedflib says -1 for an annotation without a duration.
    mine = [(e["time"], e.get("duration", -1.0), e["label"]) for e in items]
    assert len(expected) == 858
    assert sorted(mine) == sorted(expected)
    assert [e["time"] for e in items] == sorted(e["time"] for e in items)


WINDOWS = {"100": (9.5, 10.5), "s0010_re": (9.75, 10.25)}


@pytest.mark.parametrize("max_points", [None, 300], ids=["all", "max_points"])
@pytest.mark.parametrize("units", ["digital", "physical"])
@pytest.mark.parametrize("record", WINDOWS)
def test_binary_and_arrow_answers_decode_to_the_json_numbers(
        atrium: AtriumUnderTest, shared: dict[str, dict[str, Any]], record: str, units: str,
        max_points: int | None) -> None:
    start, end = WINDOWS[record]  # across the 10 s segment boundary
    path = f"/api/recordings/{shared[record]['id']}/signal"
    params = {"start": start, "end": end, "units": units, "max_points": max_points}
    as_json = get(atrium, path, **params).json()
    binary = get(atrium, path, **params, format="binary")
    arrow = get(atrium, path, **params, format="arrow")
    assert binary.headers["Content-Type"].startswith("application/octet-stream")
    assert arrow.headers["Content-Type"].startswith("application/vnd.apache.arrow.stream")
    for decoded in (decode_binary(binary.content), decode_arrow(arrow.content)):
        assert (decoded["sampling_rate"], decoded["start"], decoded["end"]) == (
            as_json["sampling_rate"], as_json["start"], as_json["end"])
        assert len(decoded["channels"]) == len(as_json["channels"])
        for mine, theirs in zip(decoded["channels"], as_json["channels"], strict=True):
            for key in ("index", "sampling_rate", "first_sample", "samples"):
                assert mine[key] == theirs[key], key
            assert mine.get("positions") == theirs.get("positions")
            assert len(theirs["samples"]) <= (max_points or len(theirs["samples"]))


def test_arrow_columns_are_named_after_the_channels_with_their_units(
        atrium: AtriumUnderTest, shared: dict[str, dict[str, Any]]) -> None:
    answer = requests.get(
        f"{atrium.url}/api/recordings/{shared['s0010_re']['id']}/signal", timeout=60,
        params={"end": 1, "channels": "vx,i,v6"},
        headers={**atrium.auth(), "Accept": "application/vnd.apache.arrow.stream"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/vnd.apache.arrow.stream")
    decoded = decode_arrow(answer.content)
    assert [c["name"] for c in decoded["channels"]] == ["vx", "i", "v6"]
    assert [c["index"] for c in decoded["channels"]] == [12, 0, 11]
    assert {c["units"] for c in decoded["channels"]} == {"mV"}
    assert {c["type"] for c in decoded["channels"]} == {"double"}
    assert all(len(c["samples"]) == 1000 for c in decoded["channels"])


# --- caps ----------------------------------------------------------------------------


def test_an_answer_over_the_json_cap_names_max_points_and_binary_still_answers(
        atrium: AtriumUnderTest) -> None:
    n = 700_001  # three channels: 2,100,003 samples, over the 2,000,000 of one JSON answer
    samples = [i % 1000 for i in range(n)]
    created = post_json(atrium, {"recording_type": "ECG", "sampling_rate": 1000, "channels": [
        {"name": name, "samples": samples} for name in ("a", "b", "c")]})
    assert created.status_code == 201, created.text
    path = f"/api/recordings/{created.json()['id']}/signal"
    refused = get(atrium, path, units="digital")
    assert refused.status_code == 400
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert "max_points" in refused.json()["detail"]
    binary = get(atrium, path, units="digital", format="binary")
    assert binary.status_code == 200
    assert decode_binary(binary.content)["channels"][2]["samples"] == samples
    assert get(atrium, path, units="digital", max_points=1000).status_code == 200
    assert get(atrium, path, units="digital", channels="a,b").status_code == 200


# --- bad files: 4xx problems, nothing stored ---------------------------------------


def _bytes(name: str) -> bytes:
    return (SIGNALS / name).read_bytes()


def _edf_with(offset: int, width: int, value: bytes) -> bytes:
    data = bytearray(_bytes("test_generator_2.edf"))
    data[offset:offset + width] = value.ljust(width)
    return bytes(data)


BAD_FILES = {
    "truncated-dat": lambda: {"100.hea": _bytes("100.hea"),
                              "100.dat": _bytes("100.dat")[:100_000]},
    "hea-declares-more-samples": lambda: {
        "100.hea": _bytes("100.hea").replace(b"650000", b"650100"), "100.dat": _bytes("100.dat")},
    "hea-declares-fewer-samples": lambda: {
        "100.hea": _bytes("100.hea").replace(b"650000", b"600000"), "100.dat": _bytes("100.dat")},
    "hea-sampling-rate-0": lambda: {
        "100.hea": _bytes("100.hea").replace(b" 360 ", b" 0 "), "100.dat": _bytes("100.dat")},
    "hea-without-its-xyz": lambda: {"s0010_re.hea": _bytes("s0010_re.hea"),
                                    "s0010_re.dat": _bytes("s0010_re.dat")},
    "edf-corrupt-header-size": lambda: {"x.edf": _edf_with(184, 8, b"garbage!")},
    "edf-declares-more-records": lambda: {"x.edf": _edf_with(
        236, 8, str(int(_bytes("test_generator_2.edf")[236:244]) + 1).encode())},
    "edf-truncated": lambda: {"x.edf": _bytes("test_generator_2.edf")[:-1000]},
    "edf-annotations-only": lambda: {"test_edfann.edf": _bytes("test_edfann.edf")},
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_are_refused_with_a_problem_and_nothing_stored(
        atrium: AtriumUnderTest, case: str) -> None:
    before = count_recordings(atrium)
    answer = upload_blobs(atrium, BAD_FILES[case]())
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert answer.json()["detail"]
    assert count_recordings(atrium) == before


def test_nan_in_json_samples_is_refused_and_nothing_stored(atrium: AtriumUnderTest) -> None:
    before = count_recordings(atrium)
    body = json.dumps({"recording_type": "ECG", "sampling_rate": 100,
                       "channels": [{"name": "I", "samples": [1, float("nan"), 3]}]})
    assert "NaN" in body
    answer = requests.post(f"{atrium.url}/api/recordings", data=body, timeout=30,
                           headers={**atrium.auth("clinician"),
                                    "Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert count_recordings(atrium) == before


def test_signal_windows_are_audited_once_per_window_and_events_per_read(
        atrium: AtriumUnderTest, record_100: dict[str, Any]) -> None:
    user = f"scroller-{uuid.uuid4().hex[:8]}"
    auth = atrium.auth("clinician", user=user)
    base = f"{atrium.url}/api/recordings/{record_100['id']}"
    for start in (0, 10, 20, 30):
        answer = requests.get(f"{base}/signal", headers=auth, timeout=30,
                              params={"start": start, "end": start + 10, "format": "binary"})
        assert answer.status_code == 200
    for _ in range(2):
        assert requests.get(f"{base}/events", headers=auth, timeout=30,
                            params={"end": 10}).status_code == 200
    rows = atrium.sql(
        "SELECT a.action, a.details FROM audit_log a JOIN users u ON u.id = a.user_id "
        "WHERE u.username = %s AND a.resource_id = %s ORDER BY a.id", (user, record_100["id"]))
    windows = [r for r in rows if r[0] == "GET /api/recordings/{id}/signal"]
    assert len(windows) == 1 and windows[0][1]["coalesced_seconds"] == 300
    assert [r[0] for r in rows].count("GET /api/recordings/{id}/events") == 2
