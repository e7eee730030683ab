"""DICOM waveform instances read into recordings, checked against pydicom.

pydicom's ``multiplex_array(ds, index, as_raw=True)`` is the oracle for the
digital samples (integer for integer) and ``as_raw=False`` for the physical
values (within float64 rounding).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.waveforms.numpy_handler import multiplex_array

from atrium.errors import ApiError, BadRequest, UnsupportedMediaType
from atrium.signals.dicom_waveform import (
    MAX_SAMPLES,
    RECORDING_TYPES,
    DicomWaveform,
    is_extracted_waveform,
    read_dicom_waveform,
)

ECG_12_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_AUDIO = "1.2.840.10008.5.1.4.1.1.9.4.2"


@functools.cache
def _ecg_file() -> Dataset:
    path = get_testdata_file("waveform_ecg.dcm")
    assert isinstance(path, str), "pydicom's test files are installed with pydicom"
    return pydicom.dcmread(path)


def _ecg() -> Dataset:
    return copy.deepcopy(_ecg_file())


def _code(value: str, meaning: str, scheme: str = "UCUM") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _group(rate: str, samples: np.ndarray, interpretation: str = "SS",
           label: str = "", sensitivity: str | None = "2.5", correction: str = "0.8",
           baseline: str = "-12.5", offset: str = "0") -> Dataset:
    """A multiplex group of ``samples`` (samples x channels), little endian."""
    bits = {"SB": 8, "UB": 8, "SS": 16, "US": 16, "SL": 32}[interpretation]
    group = Dataset()
    group.MultiplexGroupTimeOffset = offset
    group.MultiplexGroupLabel = label
    group.NumberOfWaveformSamples, group.NumberOfWaveformChannels = samples.shape
    group.SamplingFrequency = rate
    group.WaveformBitsAllocated = bits
    group.WaveformSampleInterpretation = interpretation
    dtype = {"SB": "<i1", "UB": "<u1", "SS": "<i2", "US": "<u2", "SL": "<i4"}[interpretation]
    data = samples.astype(dtype).tobytes()
    group.WaveformData = data + b"\0" * (len(data) % 2)
    definitions = []
    for index in range(samples.shape[1]):
        channel = Dataset()
        channel.ChannelLabel = f"{label} {index}"
        if sensitivity is not None:
            channel.ChannelSensitivity = sensitivity
            channel.ChannelSensitivityUnitsSequence = Sequence([_code("mV", "millivolt")])
        channel.ChannelSensitivityCorrectionFactor = correction
        channel.ChannelBaseline = baseline
        channel.WaveformBitsStored = bits
        definitions.append(channel)
    group.ChannelDefinitionSequence = Sequence(definitions)
    return group


def _instance(*groups: Dataset) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.2"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3", "1.2.3.5"
    ds.ContentDate, ds.ContentTime = "20240229", "235959.5"
    ds.WaveformSequence = Sequence(list(groups))
    return ds


def _ramp(samples: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-2000, 2000, size=(samples, channels))


def _two_rates() -> Dataset:
    """Two groups over the same 2 s (500 Hz and 200 Hz) and one over 0.5 s."""
    return _instance(_group("500", _ramp(1000, 2, 1), label="FAST"),
                     _group("200", _ramp(400, 1, 2), "US", label="SLOW", baseline="0"),
                     _group("500", _ramp(250, 3, 3), label="MEDIAN BEAT"))


# ------------------------------------------------------------------ pydicom's ECG file


def test_every_channel_of_every_group_has_pydicoms_raw_samples() -> None:
    ds = _ecg()
    waveform = read_dicom_waveform(ds)
    seen = set()
    for part in waveform.parts:
        for channel, detail in zip(part.recording.channels, part.channels, strict=True):
            raw = multiplex_array(ds, detail.group, as_raw=True)[:, detail.channel]
            np.testing.assert_array_equal(channel.samples, raw)
            assert channel.samples.dtype == np.int32
            seen.add((detail.group, detail.channel))
    assert seen == {(g, c) for g, item in enumerate(ds.WaveformSequence)
                    for c in range(item.NumberOfWaveformChannels)}


def test_physical_values_equal_pydicoms_scaled_samples() -> None:
    ds = _ecg()
    for part in read_dicom_waveform(ds).parts:
        for channel, detail in zip(part.recording.channels, part.channels, strict=True):
            scaled = multiplex_array(ds, detail.group, as_raw=False)[:, detail.channel]
            np.testing.assert_allclose(channel.physical(), scaled, rtol=1e-12, atol=1e-9)


def test_ecg_rhythm_and_median_beat_become_separate_parts_at_1000_hz() -> None:
    waveform = read_dicom_waveform(_ecg())
    rhythm, median = (part.recording for part in waveform.parts)
    assert [part.groups for part in waveform.parts] == [(0,), (1,)]
    assert (rhythm.name, rhythm.sampling_rate, rhythm.frames, rhythm.duration) == \
        ("RHYTHM", 1000.0, 10000, 10.0)
    assert (median.name, median.frames) == ("MEDIAN_BEAT", 1200)
    assert waveform.recording is rhythm
    assert rhythm.start == dt.datetime(2013, 1, 25, 10, 59, 19)


def test_ecg_channels_are_named_after_their_source_in_microvolts() -> None:
    waveform = read_dicom_waveform(_ecg())
    channels = waveform.recording.channels
    assert [c.name for c in channels[:3]] == ["Lead I (Einthoven)", "Lead II",
                                             "Lead III"]
    assert {c.units for c in channels} == {"uV"}
    assert channels[0].gain == pytest.approx(1 / 1.25)
    assert channels[0].baseline == 0.0 and channels[0].adc_resolution == 16
    assert channels[0].prefilter == "HP:0.05Hz LP:300Hz N:0Hz"
    detail = waveform.parts[0].channels[0]
    assert (detail.sensitivity, detail.units_code, detail.units_meaning) == \
        (1.25, "uV", "microvolt")
    assert detail.metadata()["multiplex_group_label"] == "RHYTHM"
    assert detail.source_code == "SCPECG:5.6.3-9-1"


def test_ecg_identifiers_type_and_annotations() -> None:
    ds = _ecg()
    waveform = read_dicom_waveform(ds)
    assert isinstance(waveform, DicomWaveform)
    assert waveform.sop_instance_uid == ds.SOPInstanceUID
    assert waveform.study_instance_uid == ds.StudyInstanceUID
    assert waveform.recording_type == "ECG"
    assert "RITMO SINUSALE" in waveform.statements
    assert "RR Interval: 982 ms" in waveform.statements
    events = waveform.recording.events
    # The first "P Onset" references sample position 299, counted from 1.
    assert (events[0].label, events[0].sample, events[0].time) == ("P Onset", 298, 0.298)
    assert len(events) == 66 and all(e.channel is None for e in events)


def test_extracted_classes_exclude_audio() -> None:
    assert is_extracted_waveform(ECG_12_LEAD)
    assert is_extracted_waveform("1.2.840.10008.5.1.4.1.1.9.7.1")
    assert not is_extracted_waveform(GENERAL_AUDIO)
    assert not is_extracted_waveform("1.2.840.10008.5.1.4.1.1.2")  # CT
    assert RECORDING_TYPES["1.2.840.10008.5.1.4.1.1.9.2.1"] == "HEMODYNAMIC"


# ------------------------------------------------------------------ generated instances


def test_groups_at_different_rates_share_a_recording_at_their_own_rates() -> None:
    ds = _two_rates()
    waveform = read_dicom_waveform(ds)
    both = waveform.parts[0]
    recording = both.recording
    assert both.groups == (0, 1)
    assert (recording.sampling_rate, recording.frames) == (100.0, 200)
    assert [c.samples_per_frame for c in recording.channels] == [5, 5, 2]
    assert [c.sampling_rate for c in recording.channels] == [500.0, 500.0, 200.0]
    for channel, detail in zip(recording.channels, both.channels, strict=True):
        raw = multiplex_array(ds, detail.group, as_raw=True)[:, detail.channel]
        np.testing.assert_array_equal(channel.samples, raw)
        scaled = multiplex_array(ds, detail.group, as_raw=False)[:, detail.channel]
        np.testing.assert_allclose(channel.physical(), scaled, rtol=1e-12, atol=1e-9)
    assert recording.start == dt.datetime(2024, 2, 29, 23, 59, 59, 500000)


def test_a_group_of_another_duration_is_a_part_of_its_own() -> None:
    waveform = read_dicom_waveform(_two_rates())
    median = waveform.parts[1]
    assert median.groups == (2,)
    assert (median.recording.name, median.recording.frames) == ("MEDIAN_BEAT", 250)


def test_a_group_offset_moves_its_start() -> None:
    ds = _instance(_group("250", _ramp(500, 1, 4)),
                   _group("250", _ramp(500, 1, 5), offset="1500"))
    first, later = read_dicom_waveform(ds).parts
    assert later.time_offset == 1.5
    assert first.recording.start is not None
    assert later.recording.start == first.recording.start + dt.timedelta(seconds=1.5)


def test_fractional_baseline_is_kept_exact_not_rounded() -> None:
    """DICOM -12.5 mV at 2.5 x 0.8 mV per unit is a digital baseline of 6.25."""
    channel = read_dicom_waveform(_instance(_group("100", _ramp(10, 1, 6)))).recording.channels[0]
    assert channel.gain == pytest.approx(0.5)
    assert channel.baseline == pytest.approx(6.25)


@pytest.mark.parametrize("interpretation, low, high", [
    ("SB", -128, 127), ("UB", 0, 255), ("SS", -32768, 32767), ("US", 0, 65535),
    ("SL", -(2**31), 2**31 - 1)])
def test_each_integer_interpretation_reads_its_extremes(interpretation: str, low: int,
                                                        high: int) -> None:
    samples = np.array([[low], [high], [0], [low + 1], [high - 1]], dtype=np.int64)
    ds = _instance(_group("10", samples, interpretation))
    channel = read_dicom_waveform(ds).recording.channels[0]
    np.testing.assert_array_equal(channel.samples, samples[:, 0])


def test_a_big_endian_file_has_its_words_swapped() -> None:
    samples = np.array([[1, -2], [300, -32768], [32767, 0]])
    ds = _instance(_group("10", samples))
    ds.WaveformSequence[0].WaveformData = samples.astype(">i2").tobytes()
    ds.set_original_encoding(False, False)
    recording = read_dicom_waveform(ds).recording
    np.testing.assert_array_equal(recording.channels[1].samples, samples[:, 1])


def test_a_channel_without_sensitivity_is_in_arbitrary_units() -> None:
    ds = _instance(_group("10", _ramp(4, 1, 7), label="RAW", sensitivity=None, baseline="0"))
    channel = read_dicom_waveform(ds).recording.channels[0]
    assert (channel.units, channel.gain, channel.name) == ("", 1.0 / 0.8, "RAW 0")


def _annotation(group: int, channel: int, kind: str, label: str, **timing: Any) -> Dataset:
    item = Dataset()
    item.ReferencedWaveformChannels = [group, channel]
    item.TemporalRangeType = kind
    item.UnformattedTextValue = label
    for keyword, value in timing.items():
        setattr(item, keyword, value)
    return item


def test_timed_annotations_become_events_in_frames_of_their_part() -> None:
    ds = _two_rates()
    ds.WaveformAnnotationSequence = Sequence([
        _annotation(1, 2, "SEGMENT", "artefact", ReferencedSamplePositions=[101, 351]),
        _annotation(2, 0, "MULTIPOINT", "beat", ReferencedSamplePositions=[11, 21]),
        _annotation(1, 0, "POINT", "mark", ReferencedTimeOffsets=["1500"]),
        _annotation(3, 0, "POINT", "nowhere", ReferencedSamplePositions=[9999]),
        _annotation(9, 0, "POINT", "no such group", ReferencedSamplePositions=[1]),
    ])
    waveform = read_dicom_waveform(ds)
    events = [(e.label, e.time, e.sample, e.channel, e.duration)
              for e in waveform.recording.events]
    # Frames are at 100 Hz: group 0 is 500 Hz (5 per frame), group 1 200 Hz (2).
    assert events == [("beat", 0.05, 5, None, None), ("beat", 0.1, 10, None, None),
                      ("artefact", 0.2, 20, 1, 0.5), ("mark", 1.5, 150, None, None)]
    assert waveform.parts[1].recording.events == ()
    assert waveform.statements == ()


@functools.cache
def _ecg_bytes() -> bytes:
    return Path(str(get_testdata_file("waveform_ecg.dcm"))).read_bytes()


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_files_that_pydicom_opens_give_only_client_errors(data: st.DataObject) -> None:
    """Damage lands on the waveform headers (the bytes around the first
    Channel Definition Sequence), where it changes what is parsed."""
    raw = bytearray(_ecg_bytes())
    around = raw.index(b"\x3a\x00\x00\x02")  # (003A,0200) Channel Definition Sequence
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(around - 600, around + 2000))] = data.draw(
            st.sampled_from(b"0123456789.-+e \x00\xff\x01\x10"))
    try:
        ds = pydicom.dcmread(io.BytesIO(bytes(raw)), force=True)
    except Exception:  # noqa: BLE001 - pydicom refusing the file is not the reader's case
        assume(False)
    try:
        read_dicom_waveform(ds)
    except ApiError as error:
        assert 400 <= error.status < 500


# ------------------------------------------------------------------ bad input


def _damaged(change: Callable[[Dataset], Any]) -> Dataset:
    ds = _two_rates()
    change(ds)
    return ds


def _set(keyword: str, value: Any, group: int = 0) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds.WaveformSequence[group], keyword, value)


@pytest.mark.parametrize("change, words", [
    (lambda ds: delattr(ds, "WaveformSequence"), "no Waveform Sequence"),
    (lambda ds: setattr(ds, "WaveformSequence", Sequence()), "no Waveform Sequence"),
    (_set("WaveformData", b"\0" * 100), "truncated"),
    (_set("NumberOfWaveformSamples", 999), "does not match"),
    (_set("NumberOfWaveformChannels", 3), "truncated"),
    (_set("WaveformBitsAllocated", 8), "bits allocated"),
    (_set("SamplingFrequency", "0"), "sampling frequency of 0"),
    (_set("SamplingFrequency", "-250"), "above 0"),
    (_set("SamplingFrequency", "1e99999"), "finite"),
    (_set("NumberOfWaveformSamples", 0), "no samples"),
    (_set("NumberOfWaveformSamples", MAX_SAMPLES), "past the limit"),
    (_set("NumberOfWaveformChannels", 5000), "channels"),
    (lambda ds: delattr(ds.WaveformSequence[1], "NumberOfWaveformSamples"), "lacks"),
    (lambda ds: ds.WaveformSequence[0].ChannelDefinitionSequence.pop(), "defines 1 channels"),
    (lambda ds: setattr(ds.WaveformSequence[0].ChannelDefinitionSequence[0],
                        "ChannelSensitivity", "0"), "sensitivity of zero"),
])
def test_damaged_instances_are_bad_requests(change: Callable[[Dataset], Any],
                                             words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        read_dicom_waveform(_damaged(change))


@pytest.mark.parametrize("interpretation", ["MB", "AB", "UL", "SV", "XX"])
def test_compressed_or_unknown_samples_are_unsupported(interpretation: str) -> None:
    ds = _damaged(_set("WaveformSampleInterpretation", interpretation))
    with pytest.raises(UnsupportedMediaType):
        read_dicom_waveform(ds)


_VALUES = st.one_of(st.none(), st.integers(-(2**33), 2**33), st.text(max_size=16),
                    st.sampled_from(["0", "-1", "nan", "inf", "1e400", "1\\2", "1e-400",
                                     "0.0001", "SS", "MB"]),
                    st.binary(max_size=64))
_KEYWORDS = ["NumberOfWaveformChannels", "NumberOfWaveformSamples", "SamplingFrequency",
             "WaveformBitsAllocated", "WaveformSampleInterpretation", "WaveformData",
             "MultiplexGroupTimeOffset", "MultiplexGroupLabel"]
_CHANNEL_KEYWORDS = ["ChannelSensitivity", "ChannelSensitivityCorrectionFactor",
                     "ChannelBaseline", "ChannelSampleSkew", "WaveformBitsStored",
                     "FilterLowFrequency", "ChannelLabel"]


def _assign(item: Dataset, keyword: str, value: Any) -> None:
    """Set an element as a damaged file would hold it; pydicom may refuse some pairs."""
    if value is None:
        if keyword in item:
            delattr(item, keyword)
        return
    with contextlib.suppress(ValueError, TypeError, OverflowError):
        setattr(item, keyword, value)


# pydicom warns of each invalid value it is handed; that is the point here.
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_headers_and_data_give_only_client_errors(data: st.DataObject) -> None:
    ds = _two_rates()
    for _ in range(data.draw(st.integers(1, 4))):
        group = ds.WaveformSequence[data.draw(st.integers(0, 2))]
        if data.draw(st.booleans()):
            _assign(group, data.draw(st.sampled_from(_KEYWORDS)), data.draw(_VALUES))
        elif data.draw(st.booleans()):
            channel = group.ChannelDefinitionSequence[0]
            _assign(channel, data.draw(st.sampled_from(_CHANNEL_KEYWORDS)), data.draw(_VALUES))
        else:
            value = group.get("WaveformData")
            raw = bytearray(value if isinstance(value, bytes) else b"")
            cut = data.draw(st.integers(0, len(raw) + 8))
            raw = raw[:cut] + bytes(max(0, cut - len(raw)))
            group.WaveformData = bytes(raw)
    try:
        waveform = read_dicom_waveform(ds)
    except ApiError as error:
        assert 400 <= error.status < 500
    else:
        for part in waveform.parts:
            for channel in part.recording.channels:
                assert channel.samples.size == part.recording.frames * channel.samples_per_frame
