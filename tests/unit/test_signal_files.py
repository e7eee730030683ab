"""WFDB, EDF and BDF readers and writers, checked against wfdb and pyedflib.

The oracles read the same bytes from disk; the digital samples must be equal
integer for integer, the physical values equal within float rounding.
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path

import numpy as np
import pyedflib
import pytest
import wfdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atrium.errors import ApiError, BadRequest, UnsupportedMediaType
from atrium.signals import read_signal_files
from atrium.signals.edf import read_edf, read_edf_annotations, write_edf
from atrium.signals.model import Channel, Event, Recording
from atrium.signals.wfdb import read_wfdb, write_wfdb

DATA = Path("/work/shared/data/signals")
if not DATA.is_dir():
    DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "signals"
pytestmark = [
    pytest.mark.skipif(not DATA.is_dir(), reason="shared signal records absent"),
    # wfdb still calls pandas with inplace=True; not ours to fix
    pytest.mark.filterwarnings("ignore:The inplace keyword"),
]


def _files(*names: str) -> dict[str, bytes]:
    return {name: (DATA / name).read_bytes() for name in names}


def _record_100() -> dict[str, bytes]:
    return _files("100.hea", "100.dat", "100.atr")


def _edf_for_pyedflib(data: bytes) -> bytes:
    """edflib refuses non-ASCII header text (test_generator_2 writes '°' as a unit)."""
    header = int(data[184:192])
    return data[:header].replace(b"\xb0", b"d") + data[header:]


def _write(tmp_path: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)


def _expanded(record: wfdb.Record) -> list[np.ndarray]:
    return [np.asarray(s) for s in record.e_d_signal]


# ----------------------------------------------------------------- WFDB, real records


@pytest.mark.parametrize(("record", "names"), [
    ("100", ("100.hea", "100.dat")),
    ("s0010_re", ("s0010_re.hea", "s0010_re.dat", "s0010_re.xyz")),
])
def test_wfdb_digital_samples_equal_rdrecord(record: str, names: tuple[str, ...]) -> None:
    recording = read_wfdb(_files(*names))
    oracle = wfdb.rdrecord(str(DATA / record), physical=False)
    assert len(recording.channels) == oracle.n_sig
    assert recording.frames == oracle.sig_len and recording.sampling_rate == oracle.fs
    for index, channel in enumerate(recording.channels):
        assert channel.samples.dtype == np.int32
        np.testing.assert_array_equal(channel.samples, oracle.d_signal[:, index])
        assert channel.name == oracle.sig_name[index]
        assert channel.units == oracle.units[index]
        assert channel.gain == oracle.adc_gain[index]
        assert channel.baseline == oracle.baseline[index]
        assert channel.adc_resolution == oracle.adc_res[index]
        assert channel.initial_value == oracle.init_value[index]


def test_wfdb_physical_values_equal_rdrecord_within_rounding() -> None:
    recording = read_wfdb(_files("s0010_re.hea", "s0010_re.dat", "s0010_re.xyz"))
    oracle = wfdb.rdrecord(str(DATA / "s0010_re"))
    for index, channel in enumerate(recording.channels):
        np.testing.assert_allclose(channel.physical(), oracle.p_signal[:, index], rtol=1e-6,
                                   atol=1e-9)


def test_s0010_re_reads_the_three_frank_leads_from_its_xyz_file() -> None:
    recording = read_wfdb(_files("s0010_re.hea", "s0010_re.dat", "s0010_re.xyz"))
    assert [c.name for c in recording.channels][-3:] == ["vx", "vy", "vz"]
    assert recording.duration == pytest.approx(38.4)


def test_100_atr_events_equal_rdann() -> None:
    recording = read_wfdb(_record_100())
    oracle = wfdb.rdann(str(DATA / "100"), "atr")
    assert [e.sample for e in recording.events] == oracle.sample.tolist()
    assert [e.label for e in recording.events] == oracle.symbol
    # rdann keeps the NUL that pads an odd-length aux string; the reader drops it.
    assert [e.text or "" for e in recording.events] == [a.rstrip("\x00")
                                                         for a in oracle.aux_note]
    assert [e.channel for e in recording.events] == oracle.chan.tolist()
    assert [e.number for e in recording.events] == oracle.num.tolist()
    assert [e.subtype for e in recording.events] == oracle.subtype.tolist()
    assert recording.events[0].time == oracle.sample[0] / 360
    assert {"N", "A", "+"} <= {e.label for e in recording.events}
    assert recording.events[0].label == "+" and recording.events[0].text == "(N"


def test_upload_names_with_directories_are_matched_by_base_name() -> None:
    files = {f"upload/{name}": data for name, data in _record_100().items()}
    assert read_signal_files(files).frames == 650000


# ----------------------------------------------------------------- WFDB, every format


def _pack(fmt: int, flat: np.ndarray) -> bytes:
    """Independent packing of interleaved samples, for formats wfdb cannot write."""
    v = flat.astype(np.int64)
    if fmt == 61:
        return v.astype(">i2").tobytes()
    if fmt == 160:
        return (v + 32768).astype("<u2").tobytes()
    if fmt == 8:
        raise AssertionError("format 8 is packed by the caller")
    groups = -(-v.size // 3)
    v = np.concatenate([v, np.zeros(groups * 3 - v.size, np.int64)]).reshape(-1, 3) & 0x3FF
    if fmt == 311:
        words = v[:, 0] | (v[:, 1] << 10) | (v[:, 2] << 20)
        return words.astype("<u4").tobytes()
    w0 = (v[:, 0] << 1) | ((v[:, 2] & 0x1F) << 11)
    w1 = (v[:, 1] << 1) | ((v[:, 2] >> 5) << 11)
    return np.stack([w0, w1], 1).astype("<u2").tobytes()


_RANGES = {80: 7, 212: 11, 16: 15, 24: 23, 32: 31, 310: 9, 311: 9, 61: 15, 160: 15}


def _known_samples(bits: int, frames: int, channels: int, seed: int = 7) -> np.ndarray:
    """Random samples spanning the format's range, its extremes included
    (the lowest value is WFDB's "invalid" marker: it must read back as stored)."""
    rng = np.random.default_rng(seed)
    low, high = -(2**bits), 2**bits - 1
    samples = rng.integers(low, high, size=(frames, channels), endpoint=True, dtype=np.int64)
    samples[0, 0], samples[1, 0] = low, high
    return samples


@pytest.mark.parametrize("fmt", [80, 212, 16, 24, 32])
def test_formats_written_by_wrsamp_read_bit_exact(tmp_path: Path, fmt: int) -> None:
    samples = _known_samples(_RANGES[fmt], 1001, 3)
    wfdb.wrsamp("rec", fs=500, units=["mV"] * 3, sig_name=["a", "b", "c"],
                d_signal=samples, fmt=[str(fmt)] * 3, adc_gain=[200.0] * 3, baseline=[0] * 3,
                write_dir=str(tmp_path))
    recording = read_wfdb({p.name: p.read_bytes() for p in tmp_path.iterdir()})
    oracle = wfdb.rdrecord(str(tmp_path / "rec"), physical=False)
    for index, channel in enumerate(recording.channels):
        np.testing.assert_array_equal(channel.samples, oracle.d_signal[:, index])
        np.testing.assert_array_equal(channel.samples, samples[:, index])


@pytest.mark.parametrize("fmt", [310, 311, 61, 160])
@pytest.mark.parametrize("frames", [1000, 1001, 1002])
def test_packed_formats_read_as_rdrecord_reads_them(tmp_path: Path, fmt: int,
                                                    frames: int) -> None:
    samples = _known_samples(_RANGES[fmt], frames, 1)
    samples[0, 0] += 1  # rdrecord maps the invalid marker of these formats differently
    (tmp_path / "rec.dat").write_bytes(_pack(fmt, samples.reshape(-1)))
    checksum = (int(samples.sum()) + 32768) % 65536 - 32768
    (tmp_path / "rec.hea").write_text(f"rec 1 250 {frames}\nrec.dat {fmt} 100/uV 10 0 "
                                      f"{samples[0, 0]} {checksum} 0 x\n")
    recording = read_wfdb({p.name: p.read_bytes() for p in tmp_path.iterdir()})
    oracle = wfdb.rdrecord(str(tmp_path / "rec"), physical=False)
    np.testing.assert_array_equal(recording.channels[0].samples, oracle.d_signal[:, 0])
    np.testing.assert_array_equal(recording.channels[0].samples, samples[:, 0])


def test_format_8_first_differences_start_at_the_initial_value(tmp_path: Path) -> None:
    samples = np.cumsum(np.random.default_rng(1).integers(-100, 100, size=(500, 2)), 0) + 40
    steps = np.diff(samples, axis=0, prepend=np.full((1, 2), 40))
    (tmp_path / "rec.dat").write_bytes(steps.astype(np.int8).tobytes())
    (tmp_path / "rec.hea").write_text(
        "rec 2 100 500\nrec.dat 8 200/mV 8 0 40\nrec.dat 8 200/mV 8 0 40\n")
    recording = read_wfdb({p.name: p.read_bytes() for p in tmp_path.iterdir()})
    oracle = wfdb.rdrecord(str(tmp_path / "rec"), physical=False)
    for index, channel in enumerate(recording.channels):
        np.testing.assert_array_equal(channel.samples, oracle.d_signal[:, index])
        np.testing.assert_array_equal(channel.samples, samples[:, index])


def test_samples_per_frame_keep_every_sample_at_the_channel_rate(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    fast, slow = rng.integers(-2000, 2000, 4000), rng.integers(-2000, 2000, 1000)
    wfdb.wrsamp("rec", fs=250, units=["mV", "mV"], sig_name=["fast", "slow"],
                e_d_signal=[fast, slow], samps_per_frame=[4, 1], fmt=["212", "212"],
                adc_gain=[200.0, 200.0], baseline=[0, 0], write_dir=str(tmp_path))
    recording = read_wfdb({p.name: p.read_bytes() for p in tmp_path.iterdir()})
    oracle = wfdb.rdrecord(str(tmp_path / "rec"), physical=False, smooth_frames=False)
    assert recording.frames == 1000
    assert [c.sampling_rate for c in recording.channels] == [1000.0, 250.0]
    assert [c.samples_per_frame for c in recording.channels] == [4, 1]
    for channel, expected in zip(recording.channels, _expanded(oracle), strict=True):
        np.testing.assert_array_equal(channel.samples, expected)
    np.testing.assert_array_equal(recording.channels[0].samples, fast)


def test_skew_and_byte_offset_are_honoured_as_rdrecord_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    stored = rng.integers(-30000, 30000, size=(103, 2)).astype("<i2")
    (tmp_path / "rec.dat").write_bytes(b"\x55" * 16 + stored.tobytes())
    (tmp_path / "rec.hea").write_text(
        "rec 2 500 100\nrec.dat 16+16 200/mV 16 0\nrec.dat 16:3+16 200/mV 16 0\n")
    recording = read_wfdb({p.name: p.read_bytes() for p in tmp_path.iterdir()})
    oracle = wfdb.rdrecord(str(tmp_path / "rec"), physical=False)
    for index, channel in enumerate(recording.channels):
        np.testing.assert_array_equal(channel.samples, oracle.d_signal[:, index])
    np.testing.assert_array_equal(recording.channels[1].samples[:97], stored[3:100, 1])


def test_skew_past_the_end_of_the_file_reads_the_invalid_value(tmp_path: Path) -> None:
    stored = np.arange(200, dtype="<i2").reshape(100, 2)
    (tmp_path / "rec.dat").write_bytes(stored.tobytes())
    (tmp_path / "rec.hea").write_text(
        "rec 2 500 100\nrec.dat 16 200/mV 16 0\nrec.dat 16:2 200/mV 16 0\n")
    recording = read_wfdb({p.name: p.read_bytes() for p in tmp_path.iterdir()})
    oracle = wfdb.rdrecord(str(tmp_path / "rec"), physical=False)
    np.testing.assert_array_equal(recording.channels[1].samples, oracle.d_signal[:, 1])
    assert recording.channels[1].samples[-2:].tolist() == [-32768, -32768]


# ----------------------------------------------------------------- WFDB writer


def test_written_100_reads_back_in_wfdb_with_the_same_samples_and_events(
        tmp_path: Path) -> None:
    recording = read_wfdb(_record_100())
    files = write_wfdb(recording)
    assert sorted(files) == ["100.atr", "100.dat", "100.hea"]
    assert len(files["100.dat"]) == len(_record_100()["100.dat"])  # format 212 chosen
    _write(tmp_path, files)
    oracle = wfdb.rdrecord(str(tmp_path / "100"), physical=False)
    for index, channel in enumerate(recording.channels):
        np.testing.assert_array_equal(oracle.d_signal[:, index], channel.samples)
    annotations = wfdb.rdann(str(tmp_path / "100"), "atr")
    assert annotations.sample.tolist() == [e.sample for e in recording.events]
    assert annotations.symbol == [e.label for e in recording.events]
    assert [a.rstrip("\x00") for a in annotations.aux_note] == [e.text or ""
                                                                for e in recording.events]
    assert read_wfdb(files).events == recording.events


def _synthetic(values: np.ndarray, spf: tuple[int, ...] = (1,),
               events: tuple[Event, ...] = ()) -> Recording:
    frames = values.size // sum(spf)
    at, channels = 0, []
    for index, n in enumerate(spf):
        part = values[at:at + frames * n]
        at += frames * n
        channels.append(Channel(name=f"lead {index}", units="mV", gain=1000.0, baseline=-3.0,
                                adc_resolution=0, samples_per_frame=n, sampling_rate=500.0 * n,
                                samples=part))
    return Recording(name="syn-1", sampling_rate=500.0, frames=frames, channels=tuple(channels),
                     start=dt.datetime(2020, 3, 4, 5, 6, 7), events=events)


@pytest.mark.parametrize(("bits", "fmt"), [(11, "212"), (15, "16"), (23, "24"), (31, "32")])
def test_wfdb_writer_picks_the_smallest_format_holding_the_values(
        tmp_path: Path, bits: int, fmt: str) -> None:
    values = _known_samples(bits, 3000, 1).reshape(-1).astype(np.int32)
    recording = _synthetic(values, spf=(2, 1))
    files = write_wfdb(recording)
    _write(tmp_path, files)
    oracle = wfdb.rdrecord(str(tmp_path / "syn_1"), physical=False, smooth_frames=False)
    assert oracle.fmt == [fmt, fmt]
    assert oracle.base_datetime == dt.datetime(2020, 3, 4, 5, 6, 7)
    for channel, expected in zip(recording.channels, _expanded(oracle), strict=True):
        np.testing.assert_array_equal(expected, channel.samples)
    assert oracle.adc_gain == [1000.0, 1000.0] and oracle.baseline == [-3, -3]


def test_wfdb_writer_keeps_non_beat_labels_as_comments(tmp_path: Path) -> None:
    events = (Event(time=0.5, sample=250, label="Sleep stage W"),
              Event(time=9000.0, sample=4_500_000, label="V", channel=1, number=2, subtype=3))
    recording = _synthetic(np.zeros(100, np.int32), events=events)
    _write(tmp_path, write_wfdb(recording))
    annotations = wfdb.rdann(str(tmp_path / "syn_1"), "atr")
    assert annotations.sample.tolist() == [250, 4_500_000]
    assert annotations.symbol == ['"', "V"]
    assert annotations.aux_note[0].rstrip("\x00") == "Sleep stage W"
    assert annotations.chan.tolist() == [0, 1] and annotations.num.tolist() == [0, 2]
    assert annotations.subtype.tolist() == [0, 3]


# ----------------------------------------------------------------- EDF


def test_edf_digital_and_physical_samples_equal_pyedflib(tmp_path: Path) -> None:
    data = (DATA / "test_generator_2.edf").read_bytes()
    recording = read_edf(data, "test_generator_2")
    path = tmp_path / "copy.edf"
    path.write_bytes(_edf_for_pyedflib(data))
    with pyedflib.EdfReader(str(path)) as oracle:
        assert len(recording.channels) == oracle.signals_in_file
        assert recording.duration == oracle.file_duration
        assert recording.start == oracle.getStartdatetime()
        for index, channel in enumerate(recording.channels):
            np.testing.assert_array_equal(channel.samples, oracle.readSignal(index, digital=True))
            physical = oracle.readSignal(index)
            np.testing.assert_allclose(channel.physical(), physical, rtol=1e-9,
                                       atol=1e-9 * np.abs(physical).max())
            assert channel.sampling_rate == oracle.getSampleFrequency(index)
            assert channel.name == oracle.getLabel(index)
        onsets, durations, texts = oracle.readAnnotations()
    assert [e.time for e in recording.events] == onsets.tolist()
    assert [e.label for e in recording.events] == texts.tolist()
    assert [-1.0 if e.duration is None else e.duration for e in recording.events] == \
        durations.tolist()
    assert recording.channels[8].units == "°"


def test_edf_annotations_of_test_edfann_equal_pyedflib() -> None:
    data = (DATA / "test_edfann.edf").read_bytes()
    events = read_edf_annotations(data, 100.0)
    with pyedflib.EdfReader(str(DATA / "test_edfann.edf")) as oracle:
        onsets, durations, texts = oracle.readAnnotations()
    assert [e.time for e in events] == onsets.tolist()
    assert [e.duration for e in events] == durations.tolist()
    assert [e.label for e in events] == texts.tolist()
    assert events[2].sample == round(33.43 * 100)


def test_an_annotation_only_edf_is_merged_into_the_recording_it_comes_with() -> None:
    with pytest.raises(BadRequest, match="annotations only"):
        read_edf((DATA / "test_edfann.edf").read_bytes())
    recording = read_signal_files(_files("test_generator_2.edf", "test_edfann.edf"))
    with pyedflib.EdfReader(str(DATA / "test_edfann.edf")) as oracle:
        assert len(recording.events) == 2 + oracle.annotations_in_file
    assert recording.name == "test_generator_2"
    times = [e.time for e in recording.events]
    assert times == sorted(times)


def _pyedflib_file(path: Path, rates: list[int], bdf: bool = False) -> list[np.ndarray]:
    """A file of ``rates`` samples per 1-s record, written by pyedflib, with annotations."""
    rng = np.random.default_rng(11)
    limit = 2**23 if bdf else 2**15
    signals = [rng.integers(-limit, limit, size=rate * 10).astype(np.int32) for rate in rates]
    kind = pyedflib.FILETYPE_BDFPLUS if bdf else pyedflib.FILETYPE_EDFPLUS
    with pyedflib.EdfWriter(str(path), len(rates), file_type=kind) as writer:
        writer.setSignalHeaders([
            {"label": f"ch{i}", "dimension": "uV", "sample_frequency": rate,
             "physical_min": -500.0, "physical_max": 500.0, "digital_min": -limit,
             "digital_max": limit - 1, "transducer": "", "prefilter": ""}
            for i, rate in enumerate(rates)])
        writer.writeSamples(signals, digital=True)
        writer.writeAnnotation(1.5, 0.25, "arousal")
        writer.writeAnnotation(7.0, -1, "spindle")
    return signals


@pytest.mark.parametrize("bdf", [False, True])
def test_signals_with_different_samples_per_record_keep_every_sample(
        tmp_path: Path, bdf: bool) -> None:
    path = tmp_path / ("mixed.bdf" if bdf else "mixed.edf")
    signals = _pyedflib_file(path, [256, 128, 1], bdf=bdf)
    recording = read_signal_files({path.name: path.read_bytes()})
    assert recording.sampling_rate == 1.0 and recording.frames == 10
    assert [c.sampling_rate for c in recording.channels] == [256.0, 128.0, 1.0]
    assert [c.adc_resolution for c in recording.channels] == [24 if bdf else 16] * 3
    with pyedflib.EdfReader(str(path)) as oracle:
        for index, channel in enumerate(recording.channels):
            np.testing.assert_array_equal(channel.samples, oracle.readSignal(index, digital=True))
            np.testing.assert_array_equal(channel.samples, signals[index])
    assert [(e.time, e.duration, e.label) for e in recording.events] == [
        (1.5, 0.25, "arousal"), (7.0, None, "spindle")]


def _read_back(path: Path, recording: Recording) -> tuple[list[np.ndarray], tuple]:
    path.write_bytes(write_edf(recording))
    with pyedflib.EdfReader(str(path)) as oracle:
        digital = [oracle.readSignal(i, digital=True) for i in range(oracle.signals_in_file)]
        physical = [oracle.readSignal(i) for i in range(oracle.signals_in_file)]
        for index, channel in enumerate(recording.channels):
            assert oracle.getSampleFrequency(index) == pytest.approx(channel.sampling_rate)
            np.testing.assert_allclose(physical[index][:channel.samples.size],
                                       channel.physical(), rtol=1e-9,
                                       atol=1e-9 * np.abs(channel.physical()).max() + 1e-12)
        return digital, oracle.readAnnotations()


def test_100_written_as_edf_reads_back_with_the_same_samples_and_events(
        tmp_path: Path) -> None:
    recording = read_wfdb(_record_100())
    digital, (onsets, _, texts) = _read_back(tmp_path / "100.edf", recording)
    for channel, samples in zip(recording.channels, digital, strict=True):
        np.testing.assert_array_equal(samples[:channel.samples.size], channel.samples)
        # no exact record length divides 650000 frames at 360 Hz: the end is padded
        assert np.all(samples[channel.samples.size:] == channel.samples[-1])
    assert texts.tolist()[:3] == ["+ (N", "N", "N"]
    np.testing.assert_allclose(onsets, [e.time for e in recording.events], atol=1e-6)


def test_edf_round_trips_through_writer_and_reader(tmp_path: Path) -> None:
    path = tmp_path / "mixed.edf"
    _pyedflib_file(path, [256, 128, 1])
    recording = read_edf(path.read_bytes(), "mixed")
    digital, (onsets, durations, texts) = _read_back(tmp_path / "again.edf", recording)
    for channel, samples in zip(recording.channels, digital, strict=True):
        np.testing.assert_array_equal(samples, channel.samples)
    assert texts.tolist() == ["arousal", "spindle"] and durations.tolist() == [0.25, -1]
    again = read_edf((tmp_path / "again.edf").read_bytes(), "again")
    assert [c.edf_range for c in again.channels] == [c.edf_range for c in recording.channels]


def test_an_edf_with_mixed_rates_exports_as_wfdb_with_samples_per_frame(
        tmp_path: Path) -> None:
    path = tmp_path / "mixed.edf"
    _pyedflib_file(path, [256, 128, 1])
    recording = read_edf(path.read_bytes(), "mixed")
    _write(tmp_path, write_wfdb(recording))
    oracle = wfdb.rdrecord(str(tmp_path / "mixed"), physical=False, smooth_frames=False)
    assert oracle.samps_per_frame == [256, 128, 1] and oracle.fs == 1
    for channel, expected in zip(recording.channels, _expanded(oracle), strict=True):
        np.testing.assert_array_equal(expected, channel.samples)
    annotations = wfdb.rdann(str(tmp_path / "mixed"), "atr")
    assert [a.rstrip("\x00") for a in annotations.aux_note] == ["arousal", "spindle"]


def test_values_past_16_bits_are_written_as_bdf(tmp_path: Path) -> None:
    values = _known_samples(20, 2000, 1).reshape(-1).astype(np.int32)
    recording = _synthetic(values, spf=(3, 1))
    data = write_edf(recording)
    assert data[:8] == b"\xffBIOSEMI"
    digital, _ = _read_back(tmp_path / "wide.bdf", recording)
    for channel, samples in zip(recording.channels, digital, strict=True):
        np.testing.assert_array_equal(samples[:channel.samples.size], channel.samples)


def test_values_past_24_bits_cannot_be_written_as_edf() -> None:
    recording = _synthetic(np.array([0, 2**30], np.int32))
    with pytest.raises(BadRequest, match="export it as WFDB"):
        write_edf(recording)


def _discontinuous(tmp_path: Path, second_onset: bytes) -> bytes:
    """A 10-record EDF+ file marked EDF+D whose second record starts at ``second_onset``."""
    path = tmp_path / "mixed.edf"
    _pyedflib_file(path, [256, 128, 1])
    data = path.read_bytes()
    data = data[:192] + b"EDF+D".ljust(44) + data[236:]
    header, record = int(data[184:192]), (256 + 128 + 1) * 2 + 120
    at = data.index(b"+1\x14\x14\x00", header + record)
    return data[:at] + second_onset + data[at + len(second_onset):]


def test_edf_plus_d_without_gaps_reads_as_continuous(tmp_path: Path) -> None:
    recording = read_edf(_discontinuous(tmp_path, b"+1\x14\x14\x00"))
    assert recording.frames == 10


def test_edf_plus_d_with_gaps_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedMediaType, match="gaps"):
        read_edf(_discontinuous(tmp_path, b"+5\x14\x14\x00"))


def test_a_recording_whose_channels_disagree_with_its_frames_is_refused() -> None:
    channel = Channel(name="a", units="mV", gain=200.0, baseline=0.0, adc_resolution=12,
                      samples_per_frame=2, sampling_rate=500.0,
                      samples=np.zeros(9, np.int32))
    with pytest.raises(ValueError, match="channel 0 has 9 samples"):
        Recording(name="r", sampling_rate=250.0, frames=5, channels=(channel,))


# ----------------------------------------------------------------- bad input


def _hea(text: str, **files: bytes) -> dict[str, bytes]:
    return {"r.hea": text.encode(), **{name.replace("_", "."): data
                                       for name, data in files.items()}}


@pytest.mark.parametrize(("files", "error", "words"), [
    (_hea("r 1 250 10\nr.dat 16 200 16 0 0 0 0 a\n"), BadRequest, "'r.dat'.*not in the upload"),
    (_hea("r 1 250 10\nr.dat 16\n", r_dat=b"\0" * 19), BadRequest, "truncated"),
    (_hea("r 1 0 10\nr.dat 16\n", r_dat=b"\0" * 20), BadRequest, "frequency of 0"),
    (_hea("r 1 250 10\nr.dat 99\n", r_dat=b"\0" * 20), UnsupportedMediaType, "format 99"),
    (_hea("r/2 1 250 10\nr_1 10\n"), UnsupportedMediaType, "multi-segment"),
    (_hea("r 1 250 3000000000\nr.dat 16\n", r_dat=b""), BadRequest, "limit"),
    (_hea("r 5000 250 10\n"), BadRequest, "5000 signals"),
    (_hea("r 2 250 10\nr.dat 16\n", r_dat=b"\0" * 40), BadRequest, "describes 1"),
    (_hea("r 1 250 2\nr.dat 16 200 16 0 0 5 0 a\n", r_dat=b"\1\0\1\0"), BadRequest, "checksum"),
    (_hea("r 1 250 x\nr.dat 16\n", r_dat=b""), BadRequest, "not an integer"),
    ({"a.hea": b"", "b.hea": b""}, BadRequest, "exactly one .hea"),
    ({"x.txt": b"hello"}, UnsupportedMediaType, "no signal file"),
])
def test_bad_wfdb_uploads_are_refused_with_a_sentence(files: dict[str, bytes],
                                                      error: type[ApiError], words: str) -> None:
    with pytest.raises(error, match=words) as raised:
        read_signal_files(files)
    assert type(raised.value) is error


def test_a_damaged_annotation_file_is_refused() -> None:
    files = _record_100()
    files["100.atr"] = files["100.atr"][:8] + b"\xff\xfc"  # an AUX field past the end
    with pytest.raises(BadRequest, match="100.atr"):
        read_wfdb(files)


def _edf_header(data: bytes, at: int, width: int, value: bytes) -> bytes:
    return data[:at] + value.ljust(width) + data[at + width:]


@pytest.mark.parametrize(("change", "error", "words"), [
    (lambda d: d[:200], UnsupportedMediaType, "not EDF"),
    (lambda d: b"1" + d[1:], UnsupportedMediaType, "not EDF"),
    (lambda d: d[:-3], BadRequest, "truncated"),
    (lambda d: d + b"\0\0", BadRequest, "does not match|truncated"),
    (lambda d: _edf_header(d, 236, 8, b"601"), BadRequest, "truncated"),
    (lambda d: _edf_header(d, 244, 8, b"0"), BadRequest, "sampling rate of 0"),
    (lambda d: _edf_header(d, 244, 8, b"abc"), BadRequest, "not a number"),
    (lambda d: _edf_header(d, 252, 4, b"5000"), BadRequest, "5000 signals"),
    (lambda d: _edf_header(d, 252, 4, b"11"), BadRequest, "header of"),
    (lambda d: _edf_header(d, 236, 8, b"99999999"), BadRequest, "limit|at most"),
])
def test_bad_edf_files_are_refused_with_a_sentence(change, error: type[ApiError],  # type: ignore[no-untyped-def]
                                                   words: str) -> None:
    data = change((DATA / "test_generator_2.edf").read_bytes())
    with pytest.raises(error, match=words):
        read_signal_files({"bad.edf": data})


@functools.cache
def _small_wfdb() -> dict[str, bytes]:
    """The first second of record 100 with its first annotations, as a small record."""
    recording = read_wfdb(_record_100())
    frames = 360
    short = Recording(
        name="s", sampling_rate=360.0, frames=frames,
        channels=tuple(Channel(name=c.name, units=c.units, gain=c.gain, baseline=c.baseline,
                               adc_resolution=c.adc_resolution, samples_per_frame=1,
                               sampling_rate=360.0, samples=c.samples[:frames])
                       for c in recording.channels),
        events=tuple(e for e in recording.events if e.sample < frames))
    return write_wfdb(short)


@functools.cache
def _small_edf() -> bytes:
    return write_edf(read_wfdb(_small_wfdb()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_files_give_only_client_errors(data: st.DataObject) -> None:
    files = dict(_small_wfdb())
    files["x.edf"] = _small_edf()
    target = data.draw(st.sampled_from(sorted(files)))
    original = files[target]
    cut = data.draw(st.integers(0, len(original)))
    damaged = bytearray(original[:cut] if data.draw(st.booleans()) else original)
    # Most damage goes to the headers (the first KiB), where it changes what is parsed.
    reach = data.draw(st.sampled_from([min(len(damaged), 1024), len(damaged)]))
    for _ in range(data.draw(st.integers(0, 8))):
        if reach:
            damaged[data.draw(st.integers(0, reach - 1))] = data.draw(
                st.sampled_from(b"0123456789 .-+/x:()#\n\x14\x15\x00\xff"))
    upload = {"x.edf": bytes(damaged)} if target == "x.edf" else {
        name: (bytes(damaged) if name == target else value)
        for name, value in files.items() if name != "x.edf"}
    try:
        read_signal_files(upload)
    except ApiError as error:
        assert 400 <= error.status < 500
