"""Recordings stored in PostgreSQL (``atrium.signals.store``) against a real server:
the shared records come back sample-exact from any window, only the segments
that overlap a window are read, and the blobs are as small as the codec makes them.

No Orthanc: a fresh database with the migrations applied, as the app's own.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from atrium.cache import ByteLru
from atrium.devenv import LocalCluster
from atrium.errors import BadRequest, NotFound
from atrium.migrations import apply_migrations
from atrium.signals import codec, read_signal_files, store
from atrium.signals.model import Channel, Recording
from atrium.signals.store import SEGMENTS_QUERY, read_events, read_window, write_recording

DATA = Path("/work/shared/data/signals")
if not DATA.is_dir():
    DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "signals"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not DATA.is_dir(), reason="shared signal records absent"),
]

RECORDS = {
    "100": ("100.hea", "100.dat", "100.atr"),
    "s0010_re": ("s0010_re.hea", "s0010_re.dat", "s0010_re.xyz"),
    "test_generator_2": ("test_generator_2.edf",),
}


def _read(record: str) -> Recording:
    return read_signal_files({name: (DATA / name).read_bytes() for name in RECORDS[record]})


def _mixed_rates() -> Recording:
    """A 30 s recording at a fractional frame rate (250.5 Hz) whose channel 1 runs
    at four samples a frame (1002 Hz), between two channels at the frame rate."""
    rng = np.random.default_rng(11)
    frames = 7515

    def walk(n: int) -> np.ndarray:
        return np.cumsum(rng.integers(-40, 41, n)).astype(np.int32)

    def channel(name: str, spf: int) -> Channel:
        return Channel(name=name, units="mV", gain=200.0, baseline=0, adc_resolution=16,
                       samples_per_frame=spf, sampling_rate=250.5 * spf,
                       samples=walk(frames * spf))

    return Recording(name="mixed", sampling_rate=250.5, frames=frames,
                     channels=(channel("slow a", 1), channel("fast", 4), channel("slow b", 1)))


def _expected(recording: Recording, index: int, start: float, end: float | None) -> np.ndarray:
    """The oracle, straight from the definition: samples i with start <= i / rate < end."""
    channel = recording.channels[index]
    times = np.arange(channel.samples.size) / channel.sampling_rate
    keep = (times >= start) & ((times < end) if end is not None else True)
    return channel.samples[keep]


@pytest.fixture(scope="module")
def database_url(pg_cluster: LocalCluster) -> Iterator[str]:
    name = f"t_signals_{uuid.uuid4().hex[:8]}"
    pg_cluster.ensure_database(name)
    url = pg_cluster.url(name)
    apply_migrations(url)
    yield url
    pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def organization_id(database_url: str) -> uuid.UUID:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("INSERT INTO organizations (name) VALUES ('signals') "
                           "RETURNING id").fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


@pytest.fixture(scope="module")
def stored(database_url: str, organization_id: uuid.UUID
           ) -> dict[str, tuple[uuid.UUID, Recording]]:
    """The shared records and the mixed-rate one, each written once. The mixed one
    starts 12 s before next month, so its segments span two monthly partitions."""
    now = dt.datetime.now(dt.UTC)
    next_month = (now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
                  + dt.timedelta(days=32)).replace(day=1)
    dates = {"100": now, "s0010_re": now, "test_generator_2": None,
             "mixed": next_month - dt.timedelta(seconds=12, microseconds=250)}
    recordings = {name: _read(name) for name in RECORDS} | {"mixed": _mixed_rates()}
    out = {}
    with psycopg.connect(database_url) as conn:
        for name, recording in recordings.items():
            recording_id = write_recording(
                conn, recording, organization_id=organization_id, patient_id=None,
                recording_type="ECG", recording_date=dates[name], metadata={"source": name})
            out[name] = (recording_id, recording)
        conn.commit()
    return out


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.mark.parametrize("name", ["100", "s0010_re", "test_generator_2", "mixed"])
def test_whole_recording_comes_back_sample_exact(stored: dict[str, Any],
                                                 conn: psycopg.Connection[Any],
                                                 name: str) -> None:
    recording_id, recording = stored[name]
    samples = read_window(conn, recording_id)
    assert list(samples) == list(range(len(recording.channels)))
    for index, channel in enumerate(recording.channels):
        assert samples[index].dtype == np.int32
        np.testing.assert_array_equal(samples[index], channel.samples)


@pytest.mark.parametrize(("start", "end"), [
    (9.5, 10.5),          # across the first segment boundary
    (0.0, 0.001),         # the first sample only
    (10.0, 20.0),         # exactly one segment
    (1799.99, 1805.0),    # into the last, partial window
    (1800.0, None),       # to the end
    (1806.0, 1900.0),     # past the end: nothing
    (-5.0, 0.01),         # before the start: from the first sample
    (42.0, 42.0),         # empty span
])
def test_windows_of_record_100_equal_the_file(stored: dict[str, Any],
                                              conn: psycopg.Connection[Any],
                                              start: float, end: float | None) -> None:
    recording_id, recording = stored["100"]
    samples = read_window(conn, recording_id, start=start, end=end)
    for index in (0, 1):
        np.testing.assert_array_equal(samples[index], _expected(recording, index, start, end))


def test_a_channel_subset_comes_back_in_the_order_asked(stored: dict[str, Any],
                                                        conn: psycopg.Connection[Any]) -> None:
    recording_id, recording = stored["s0010_re"]
    samples = read_window(conn, recording_id, start=19.25, end=30.5,
                          channels=[14, 2, np.int64(14), 7])
    assert list(samples) == [14, 2, 7]
    for index in (14, 2, 7):
        np.testing.assert_array_equal(samples[index], _expected(recording, index, 19.25, 30.5))


@pytest.mark.parametrize(("start", "end"), [
    (0.0, 0.001), (9.99, 10.01), (9.0, 21.0), (29.9, 31.0), (0.0, None), (17.3, 17.3011),
])
def test_a_faster_channel_keeps_its_own_rate(stored: dict[str, Any],
                                             conn: psycopg.Connection[Any],
                                             start: float, end: float | None) -> None:
    recording_id, recording = stored["mixed"]
    samples = read_window(conn, recording_id, start=start, end=end, channels=[1, 2])
    for index in (1, 2):
        np.testing.assert_array_equal(samples[index], _expected(recording, index, start, end))
    if end is not None and samples[2].size:
        assert abs(samples[1].size - 4 * samples[2].size) <= 4


def test_the_recordings_row_describes_the_recording(stored: dict[str, Any],
                                                    conn: psycopg.Connection[Any]) -> None:
    recording_id, _ = stored["mixed"]
    rate, channels, duration, metadata = conn.execute(
        "SELECT sampling_rate, number_of_channels, duration_seconds, metadata "
        "FROM recordings WHERE id = %s", (recording_id,)).fetchone()
    assert (rate, channels) == (round(250.5), 3)
    assert duration == pytest.approx(7515 / 250.5)
    assert metadata["frame_rate"] == 250.5 and metadata["source"] == "mixed"
    assert [c["sampling_rate"] for c in metadata["channels"]] == [250.5, 1002.0, 250.5]
    assert metadata["storage"]["blocks"] == [[0, 2], [1]]
    assert set(metadata["channels"][0]) >= {"name", "units", "gain", "baseline",
                                            "adc_resolution", "samples_per_frame"}
    count, in_metadata = conn.execute(
        "SELECT (metadata ->> 'event_count')::int, metadata ? 'events' FROM recordings "
        "WHERE id = %s", (stored["100"][0],)).fetchone()
    assert count == len(stored["100"][1].events) > 2000
    assert not in_metadata, "events live with their windows, not in every read of the row"


def test_events_are_kept_with_their_window_and_read_back_by_time(
        stored: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    recording_id, recording = stored["100"]
    every = read_events(conn, recording_id)
    assert [(e["time"], e["sample"], e["label"]) for e in every] == \
        [(e.time, e.sample, e.label) for e in recording.events]
    rows = conn.execute(
        "SELECT segment_start, segment_end, annotations -> 'events' FROM signal_segments "
        "WHERE recording_id = %s AND annotations ? 'events'", (recording_id,)).fetchall()
    origin = conn.execute("SELECT recording_date FROM recordings WHERE id = %s",
                          (recording_id,)).fetchone()[0]
    for start_at, end_at, events in rows:
        for event in events:
            moment = origin + dt.timedelta(seconds=event["time"])
            assert start_at <= moment < end_at + dt.timedelta(microseconds=1)
    between = read_events(conn, recording_id, start=95.5, end=130.25)
    assert between == [e for e in every if 95.5 <= e["time"] < 130.25] and between
    normal = read_events(conn, recording_id, label="N", end=60)
    assert normal == [e for e in every if e["label"] == "N" and e["time"] < 60] and normal
    assert read_events(conn, recording_id, start=1e9) == []


def test_one_row_per_channel_per_window_with_the_blob_in_the_leads_row(
        stored: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    recording_id, recording = stored["s0010_re"]
    rows = conn.execute(
        "SELECT channel_index, count(*), count(data_blob), min(annotations ->> 'block') "
        "FROM signal_segments WHERE recording_id = %s GROUP BY channel_index "
        "ORDER BY channel_index", (recording_id,)).fetchall()
    # 15 channels at 1 kHz: 24,000 samples would be 1.6 s, so the 2 s floor.
    window = conn.execute("SELECT metadata -> 'storage' -> 'window_frames' FROM recordings "
                          "WHERE id = %s", (recording_id,)).fetchone()[0]
    assert window == 2_000
    windows = -(-recording.frames // window)
    assert [r[0] for r in rows] == list(range(15))
    assert all(r[1] == windows and r[3] == "0" for r in rows)
    assert [r[2] for r in rows] == [windows] + [0] * 14
    lead = conn.execute("SELECT annotations FROM signal_segments WHERE recording_id = %s "
                        "AND channel_index = 0 LIMIT 1", (recording_id,)).fetchone()
    assert lead == ({"block": 0, "channels": list(range(15))},)


def test_a_window_crossing_a_month_boundary_reads_both_partitions(
        stored: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    recording_id, recording = stored["mixed"]
    partitions = conn.execute(
        "SELECT count(DISTINCT tableoid) FROM signal_segments WHERE recording_id = %s",
        (recording_id,)).fetchone()
    assert partitions == (2,)
    samples = read_window(conn, recording_id, start=11.0, end=13.0)
    for index in range(3):
        np.testing.assert_array_equal(samples[index], _expected(recording, index, 11.0, 13.0))


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the segments the store decodes during the test."""
    sizes: list[int] = []
    real = codec.decode

    def counting(blob: bytes) -> Any:
        sizes.append(len(blob))
        return real(blob)

    monkeypatch.setattr(store.codec, "decode", counting)
    return sizes


@pytest.mark.parametrize(("start", "end", "blobs"), [
    (100.0, 101.0, 1), (9.5, 10.5, 2), (1000.0, 1000.001, 1), (30.0, 50.0, 2),
])
def test_only_the_overlapping_segments_are_fetched_and_decoded(
        stored: dict[str, Any], conn: psycopg.Connection[Any],
        decoded: list[int], start: float, end: float, blobs: int) -> None:
    recording_id, _ = stored["100"]  # 30 min, 181 windows, one block of two channels
    read_window(conn, recording_id, start=start, end=end)
    assert len(decoded) == blobs


def test_a_scrolling_reader_decodes_each_segment_once_with_a_cache(
        stored: dict[str, Any], conn: psycopg.Connection[Any], decoded: list[int]) -> None:
    recording_id, _ = stored["100"]
    cache: ByteLru[Any, Any] = ByteLru(64 * 1024 * 1024)
    for start in (5.0, 10.0, 15.0, 20.0, 25.0):  # 10 s windows stepping by 5 s
        cached = read_window(conn, recording_id, start=start, end=start + 10, decoded=cache)
        fresh = read_window(conn, recording_id, start=start, end=start + 10)
        assert cached.keys() == fresh.keys()
        for channel, samples in fresh.items():
            np.testing.assert_array_equal(cached[channel], samples)
    fresh_decodes = 2 + 1 + 2 + 1 + 2  # windows straddling two segments decode two
    assert len(decoded) - fresh_decodes == 4, "segments 0 to 3, each once, into the cache"
    cached_window = read_window(conn, recording_id, start=10, end=20, decoded=cache)
    cached_window[0][:] = 0  # the caller's copy: the cache's segment is untouched
    np.testing.assert_array_equal(read_window(conn, recording_id, start=10, end=20,
                                              decoded=cache)[1],
                                  read_window(conn, recording_id, start=10, end=20)[1])
    assert read_window(conn, recording_id, start=10, end=20, decoded=cache)[0].any()


def test_the_segment_query_is_answered_by_the_primary_key_in_one_partition(
        stored: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    recording_id, _ = stored["100"]
    origin = conn.execute("SELECT recording_date FROM recordings WHERE id = %s",
                          (recording_id,)).fetchone()[0]
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")  # the table is small here
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN " + SEGMENTS_QUERY,
            (recording_id, origin + dt.timedelta(seconds=100),
             origin + dt.timedelta(seconds=110), [0])).fetchall())
    assert "Seq Scan" not in plan
    assert "Index Cond" in plan and "segment_start" in plan and "recording_id" in plan
    assert plan.count(" on signal_segments_") == 1, plan


@pytest.mark.parametrize(("name", "limit"), [("100", 0.48), ("s0010_re", 0.62)])
def test_blobs_take_what_the_codec_promises(stored: dict[str, Any],
                                            conn: psycopg.Connection[Any],
                                            name: str, limit: float) -> None:
    recording_id, recording = stored[name]
    total = conn.execute("SELECT sum(octet_length(data_blob)) FROM signal_segments "
                         "WHERE recording_id = %s", (recording_id,)).fetchone()[0]
    samples = sum(c.samples.size for c in recording.channels)
    bytes_per_sample = total / samples
    print(f"{name}: {bytes_per_sample:.3f} bytes/sample")  # noqa: T201 - the figure
    assert bytes_per_sample <= limit


def test_bad_windows_and_channels_are_refused(stored: dict[str, Any],
                                              conn: psycopg.Connection[Any]) -> None:
    recording_id, _ = stored["100"]
    with pytest.raises(BadRequest, match="before start"):
        read_window(conn, recording_id, start=5.0, end=4.0)
    with pytest.raises(BadRequest, match="finite"):
        read_window(conn, recording_id, start=float("nan"), end=4.0)
    with pytest.raises(BadRequest, match=r"\[2\]"):
        read_window(conn, recording_id, start=0.0, end=1.0, channels=[0, 2])
    with pytest.raises(NotFound):
        read_window(conn, uuid.uuid4(), start=0.0, end=1.0)


def test_a_refused_write_stores_nothing(conn: psycopg.Connection[Any],
                                        organization_id: uuid.UUID) -> None:
    before = conn.execute("SELECT count(*) FROM recordings").fetchone()
    with pytest.raises(BadRequest, match="storage"):
        write_recording(conn, _mixed_rates(), organization_id=organization_id,
                        patient_id=None, recording_type="ECG", recording_date=None,
                        metadata={"storage": "mine"})
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        write_recording(conn, _mixed_rates(), organization_id=uuid.uuid4(),
                        patient_id=None, recording_type="ECG", recording_date=None)
    assert conn.execute("SELECT count(*) FROM recordings").fetchone() == before
