"""The pure parts of the DICOM waveform registry: which files it refuses and why,
the metadata that links a recording to its instance, the channels' DICOM details,
and the date a recording gets."""

from __future__ import annotations

import copy
import datetime as dt
import functools
import io
import uuid

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from atrium.dicom.scan import DicomLimits
from atrium.signals.dicom_waveform import RECORDING_TYPES, WaveformPart, read_dicom_waveform
from atrium.signals.waveform_registry import (
    WaveformCandidate,
    WaveformRefused,
    channel_metadata,
    extract_waveform,
    recording_date,
    recording_metadata,
)

ECG_12_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"


def _stored(part: WaveformPart) -> list[dict[str, object]]:
    """Some of what the store writes in ``metadata.channels`` (its own keys)."""
    return [{"name": c.name, "units": c.units, "gain": c.gain, "baseline": c.baseline,
             "sampling_rate": c.sampling_rate} for c in part.recording.channels]


@functools.cache
def _ecg_file() -> Dataset:
    path = get_testdata_file("waveform_ecg.dcm")
    assert isinstance(path, str), "pydicom's test files are installed with pydicom"
    return pydicom.dcmread(path)


def _ecg() -> Dataset:
    return copy.deepcopy(_ecg_file())


def _blob(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _candidate(**changes: object) -> WaveformCandidate:
    fields: dict[str, object] = dict(
        instance_id=uuid.uuid4(), sop_instance_uid="1.2.3.4", orthanc_id="abc-def",
        updated_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), sop_class_uid=ECG_12_LEAD,
        file_size=1000, gone=False, study_id=uuid.uuid4(), organization_id=uuid.uuid4(),
        patient_id=uuid.uuid4(), study_instance_uid="1.2.3", series_instance_uid="1.2.3.1",
        study_date=dt.date(2020, 5, 4), study_time=dt.time(8, 30))
    fields.update(changes)
    return WaveformCandidate(**fields)  # type: ignore[arg-type]


def test_every_extracted_class_is_under_the_prefix_the_registry_index_covers() -> None:
    # sql/0021's partial index and the registry's query select on this prefix.
    assert all(uid.startswith("1.2.840.10008.5.1.4.1.1.9.") for uid in RECORDING_TYPES)


def test_a_whole_ecg_file_gives_both_multiplex_groups() -> None:
    waveform = extract_waveform(_blob(_ecg()))
    assert waveform.recording_type == "ECG"
    assert [part.groups for part in waveform.parts] == [(0,), (1,)]


def test_a_file_over_the_limit_is_refused_before_it_is_parsed() -> None:
    blob = _blob(_ecg())
    with pytest.raises(WaveformRefused, match=f"{len(blob)} bytes, over the limit of 1000"):
        extract_waveform(blob, max_bytes=1000)


def test_a_file_that_is_not_dicom_is_refused_by_the_scan() -> None:
    with pytest.raises(WaveformRefused, match="refused by the DICOM scan"):
        extract_waveform(b"\x00" * 128 + b"NOPE" + b"\x01" * 64)


def test_sequences_nested_past_the_limit_are_refused_before_pydicom_sees_them() -> None:
    ds = _ecg()
    item = Dataset()
    inner = item
    for _ in range(20):
        deeper = Dataset()
        inner.ReferencedSeriesSequence = Sequence([deeper])
        inner = deeper
    ds.ReferencedSeriesSequence = Sequence([item])
    with pytest.raises(WaveformRefused, match="refused by the DICOM scan"):
        extract_waveform(_blob(ds), DicomLimits(max_depth=8))


def test_truncated_waveform_data_is_refused_with_the_readers_reason() -> None:
    ds = _ecg()
    group = ds.WaveformSequence[1]
    group.WaveformData = group.WaveformData[:1000]
    with pytest.raises(WaveformRefused, match="truncated"):
        extract_waveform(_blob(ds))


def test_a_file_without_waveform_sequence_is_refused() -> None:
    ds = _ecg()
    del ds.WaveformSequence
    with pytest.raises(WaveformRefused, match="no Waveform Sequence"):
        extract_waveform(_blob(ds))


def test_the_metadata_links_each_part_to_the_instance_study_and_groups() -> None:
    waveform = read_dicom_waveform(_ecg())
    candidate = _candidate(sop_instance_uid="1.2.3.4\x00")
    meta = recording_metadata(candidate, waveform, 1)
    assert meta["sop_instance_uid"] == "1.2.3.4"  # JSONB refuses NUL
    assert meta["study_id"] == str(candidate.study_id)
    assert meta["instance_id"] == str(candidate.instance_id)
    assert (meta["waveform_part"], meta["waveform_parts"]) == (1, 2)
    assert meta["multiplex_groups"] == [1]
    assert meta["multiplex_group_labels"] == ["MEDIAN BEAT"]
    assert meta["statements"] == list(waveform.statements)
    assert {"study_instance_uid", "series_instance_uid", "orthanc_id",
            "sop_class_uid"} <= meta.keys()


def test_channel_details_sit_beside_the_store_fields_without_replacing_them() -> None:
    part = read_dicom_waveform(_ecg()).parts[0]
    stored = _stored(part)
    merged = channel_metadata(stored, part)
    for entry, standard, detail in zip(merged, stored, part.channels, strict=True):
        assert {k: entry[k] for k in standard} == standard  # gain, baseline … the store's
        assert entry["channel_baseline"] == detail.baseline
        assert entry["sensitivity"] == detail.sensitivity
        assert entry["sensitivity_units"] == detail.units_code
        assert entry["sensitivity_units_meaning"] == detail.units_meaning
        assert entry["label"] == detail.label and entry["source"] == detail.source
        assert entry["multiplex_group"] == 0


def test_channel_details_must_match_the_stored_channels() -> None:
    part = read_dicom_waveform(_ecg()).parts[0]
    with pytest.raises(ValueError, match="11 stored channels for 12"):
        channel_metadata(_stored(part)[:11], part)


def test_the_recording_date_is_the_acquisition_else_the_study_else_none() -> None:
    part = read_dicom_waveform(_ecg()).parts[0]
    assert recording_date(part, dt.date(2020, 1, 1), None) == dt.datetime(2013, 1, 25,
                                                                           10, 59, 19)
    ds = _ecg()
    del ds.AcquisitionDateTime
    del ds.ContentDate
    part = read_dicom_waveform(ds).parts[0]
    assert part.recording.start is None
    assert recording_date(part, dt.date(2020, 5, 4), dt.time(8, 30)) == \
        dt.datetime(2020, 5, 4, 8, 30)
    assert recording_date(part, dt.date(2020, 5, 4), None) == dt.datetime(2020, 5, 4)
    assert recording_date(part, None, dt.time(8, 30)) is None
