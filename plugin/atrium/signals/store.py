"""Recordings in PostgreSQL: a ``recordings`` row and its ``signal_segments``.

Samples are cut into windows of at most :data:`WINDOW_SECONDS` of the
recording's frames. In each window the channels that share an own sampling rate
(the same ``samples_per_frame``) form a *block*, coded jointly by
:func:`atrium.signals.codec.encode_block` (inter-channel prediction makes a
12-lead window far smaller than twelve single leads). ``signal_segments`` keeps
one row per channel per window, as the data model says: the block's blob sits
in the row of its first channel (the *lead*), the other channels' rows carry no
blob and name their lead in ``annotations`` (see ``docs/SIGNALS.md``,
"Storage"). Reading fetches only the lead rows of the windows that overlap the
requested time span, through the primary key ``(recording_id, segment_start,
channel_index)``, and decodes only those blobs.

Nothing here checks organization scope: callers find the recording in the
caller's scope first. Errors are :mod:`atrium.errors` exceptions (400, 404).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
import uuid
from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from psycopg.types.json import Jsonb

from atrium.cache import ByteLru
from atrium.errors import BadRequest, NotFound
from atrium.signals import codec
from atrium.signals.model import Recording

__all__ = [
    "RESERVED_METADATA_KEYS",
    "Layout",
    "WINDOW_SECONDS",
    "decimation_edges",
    "first_sample_at",
    "min_max_decimate",
    "read_events",
    "read_window",
    "window_seconds",
    "write_recording",
]

log = logging.getLogger(__name__)

WINDOW_SECONDS: Final = 10.0
"""A segment covers at most this many seconds."""

MIN_WINDOW_SECONDS: Final = 2.0
"""…and at least this many (unless the recording is shorter)."""

WINDOW_SAMPLES: Final = 24_000
"""Samples of all channels together a window aims at, between those bounds. A
reader of any span decodes the windows it touches whole, so the cost of a 10 s
read is about ``10 s + one window`` of samples: a 12-lead 500 Hz ECG is cut in
4 s windows (a 10 s read decodes about 14 s rather than 20 s, for 2 % more
bytes), while a two-lead 360 Hz record keeps 10 s windows, where the coder's
adaptation needs the length."""

SEARCH_SECONDS: Final = 300.0
"""Recording time between two full predictor searches of a block."""

SEARCH_AGAIN_ABOVE: Final = 1.15
"""A refitted window costing more than this times the last searched one's bytes
a sample is searched afresh."""

RESERVED_METADATA_KEYS: Final = frozenset({"channels", "events", "event_count", "storage",
                                           "frame_rate", "frames", "name", "file_start"})
"""Keys of ``recordings.metadata`` that the store writes; a caller's may not use them."""

_STORAGE_CODEC: Final = "atrium-signal"

_INSERT_RECORDING: Final = (
    "INSERT INTO recordings (recording_type, patient_id, organization_id, recording_date, "
    "duration_seconds, sampling_rate, number_of_channels, metadata) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id")
_COPY_SEGMENTS: Final = (
    "COPY signal_segments (recording_id, channel_index, segment_start, segment_end, "
    "data_blob, annotations) FROM STDIN")
_RECORDING_LAYOUT: Final = (
    "SELECT recording_date, metadata -> 'storage', metadata -> 'channels' "
    "FROM recordings WHERE id = %s")
SEGMENTS_QUERY: Final = (
    "SELECT channel_index, segment_start, data_blob FROM signal_segments "
    "WHERE recording_id = %s AND segment_start >= %s AND segment_start <= %s "
    "AND channel_index = ANY(%s) AND data_blob IS NOT NULL")
"""The blobs of some blocks' lead channels over a range of window starts; the
primary key's index answers it and the range on ``segment_start`` prunes months."""


# --- layout -----------------------------------------------------------------------


def window_seconds(samples_per_second: float) -> float:
    """How long a window is for a recording of ``samples_per_second`` samples of all
    channels together: :data:`WINDOW_SAMPLES` of them, within
    :data:`MIN_WINDOW_SECONDS` and :data:`WINDOW_SECONDS`."""
    return min(WINDOW_SECONDS,
               max(MIN_WINDOW_SECONDS, WINDOW_SAMPLES / max(samples_per_second, 1e-9)))


def _window_frames(frame_rate: float, samples_per_frame: Sequence[int]) -> int:
    seconds = window_seconds(frame_rate * max(1, sum(samples_per_frame)))
    return max(1, math.floor(seconds * frame_rate + 1e-9))


def _blocks(samples_per_frame: Sequence[int]) -> list[list[int]]:
    """Channel indices grouped by own rate, in index order, at most 255 per block."""
    by_rate: dict[int, list[int]] = {}
    for index, spf in enumerate(samples_per_frame):
        by_rate.setdefault(spf, []).append(index)
    blocks = []
    for members in sorted(by_rate.values(), key=lambda m: m[0]):
        for i in range(0, len(members), codec.MAX_CHANNELS):
            blocks.append(members[i:i + codec.MAX_CHANNELS])
    return blocks


def _frame_time(origin: dt.datetime, frame: int, frame_rate: float) -> dt.datetime:
    """The instant of ``frame``, to the microsecond; the same on write and read,
    so that a window's ``segment_start`` can be found by equality."""
    return origin + dt.timedelta(microseconds=round(frame * 1_000_000 / frame_rate))


def first_sample_at(t: float, rate: float, count: int) -> int:
    """The smallest ``i`` in ``[0, count]`` with ``t <= i / rate`` (``count`` if none)."""
    if t <= 0:
        return 0
    i = min(count, math.ceil(t * rate))
    while i > 0 and (i - 1) / rate >= t:
        i -= 1
    while i < count and i / rate < t:
        i += 1
    return i


def _as_utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


# --- writing ----------------------------------------------------------------------


def _channel_metadata(recording: Recording) -> list[dict[str, Any]]:
    channels = []
    for c in recording.channels:
        entry: dict[str, Any] = {
            "name": c.name, "units": c.units, "gain": c.gain, "baseline": c.baseline,
            "adc_resolution": c.adc_resolution, "sampling_rate": c.sampling_rate,
            "samples_per_frame": c.samples_per_frame, "initial_value": c.initial_value,
            "transducer": c.transducer, "prefilter": c.prefilter,
        }
        if c.edf_range is not None:
            r = c.edf_range
            entry["edf_range"] = {"physical_min": r.physical_min, "physical_max": r.physical_max,
                                  "digital_min": r.digital_min, "digital_max": r.digital_max}
        channels.append(entry)
    return channels


def _event_metadata(recording: Recording) -> list[dict[str, Any]]:
    events = []
    for e in recording.events:
        entry: dict[str, Any] = {"time": e.time, "sample": e.sample, "label": e.label}
        optional = {"channel": e.channel, "text": e.text, "duration": e.duration}
        entry.update({k: v for k, v in optional.items() if v is not None})
        if e.subtype:
            entry["subtype"] = e.subtype
        if e.number:
            entry["number"] = e.number
        events.append(entry)
    return events


class _BlockEncoder:
    """Encodes one block's windows in order. The full predictor search runs on the
    first window of every ``search_every`` (:data:`SEARCH_SECONDS` of recording);
    the windows between keep its
    predictors' shape and refit their coefficients (``codec.encode_block(like=)``),
    about twenty times faster and, on real ECG, within a fraction of a percent of
    the size. A window whose refit codes more than :data:`SEARCH_AGAIN_ABOVE`
    times the bytes a sample of the last searched window is searched afresh, so
    a change in the signal (an electrode off, an artefact) costs nothing lasting."""

    def __init__(self, search_every: int) -> None:
        self._search_every = max(1, search_every)
        self._shape: codec.SegmentInfo | None = None
        self._searched_cost = 0.0
        self._count = 0

    def encode(self, rows: NDArray[Any]) -> bytes:
        size = max(rows.size, 1)
        if self._shape is not None and self._count % self._search_every:
            blob = codec.encode_block(rows, like=self._shape)
            if len(blob) / size <= self._searched_cost * SEARCH_AGAIN_ABOVE:
                self._count += 1
                return blob
        blob = codec.encode_block(rows)
        self._shape, self._searched_cost = codec.read_info(blob), len(blob) / size
        self._count = 1
        return blob


def _event_window(time: float, frame_rate: float, window: int, windows: int) -> int:
    """The window an event at ``time`` seconds belongs to; events before the start
    go to the first, after the end to the last."""
    frame = math.floor(time * frame_rate + 1e-9) if math.isfinite(time) else 0
    return min(max(frame // window, 0), windows - 1)


def _events_by_window(recording: Recording, window: int, windows: int
                      ) -> dict[int, list[dict[str, Any]]]:
    by_window: dict[int, list[dict[str, Any]]] = {}
    if windows == 0:
        return by_window
    for event, entry in zip(recording.events, _event_metadata(recording), strict=True):
        k = _event_window(event.time, recording.sampling_rate, window, windows)
        by_window.setdefault(k, []).append(entry)
    return by_window


def _encoded_windows(recording: Recording, blocks: list[list[int]], window: int
                     ) -> list[tuple[int, int, list[bytes]]]:
    """``(first frame, end frame, one blob per block)`` for every window."""
    out = []
    search_every = round(SEARCH_SECONDS * recording.sampling_rate / window)
    encoders = [_BlockEncoder(search_every) for _ in blocks]
    for first in range(0, recording.frames, window):
        end = min(first + window, recording.frames)
        blobs = []
        for block, encoder in zip(blocks, encoders, strict=True):
            spf = recording.channels[block[0]].samples_per_frame
            rows = np.stack([recording.channels[c].samples[first * spf:end * spf]
                             for c in block])
            blobs.append(encoder.encode(rows))
        out.append((first, end, blobs))
    return out


def write_recording(conn: Any, recording: Recording, *, organization_id: uuid.UUID,
                    patient_id: uuid.UUID | None, recording_type: str,
                    recording_date: dt.datetime | None,
                    metadata: Mapping[str, Any] | None = None) -> uuid.UUID:
    """Store ``recording`` (its digital samples, channels and events) and return its id.

    Parameters
    ----------
    conn : psycopg.Connection
        Rows are written in one transaction (a savepoint if one is open).
        Segments are encoded before it starts, so no lock is held while coding.
    recording : Recording
        As a reader gives it.
    organization_id, patient_id : uuid.UUID
        The owner; ``patient_id`` may be ``None``.
    recording_type : str
        ``ECG``, ``EEG``, … (at most 50 characters).
    recording_date : datetime.datetime or None
        The instant of the first frame. ``None`` takes the file's start, else the
        current time. A naive datetime (files carry no zone) is taken as UTC.
        Segment times are this plus the frame's offset, to the microsecond.
    metadata : mapping, optional
        The caller's fields, kept beside the store's own keys
        (:data:`RESERVED_METADATA_KEYS`).

    The ``sampling_rate`` column is an integer: the frame rate rounded (at
    least 1). The exact rate is ``metadata.frame_rate`` and each channel's own
    rate ``metadata.channels[i].sampling_rate``; reading uses those. Events go
    to the ``annotations`` of the window they fall in (the row of the first
    block's lead), their number to ``metadata.event_count``, so that a Holter's
    hundred thousand beats never ride along with every read of the recording.

    Raises
    ------
    BadRequest
        ``metadata`` uses a reserved key, or ``recording_type`` is empty or too long.
    """
    extra = dict(metadata or {})
    clash = sorted(RESERVED_METADATA_KEYS.intersection(extra))
    if clash:
        raise BadRequest(f"metadata keys {', '.join(clash)} are written by Atrium; "
                         "rename them")
    if not recording_type or len(recording_type) > 50:
        raise BadRequest("recording_type must be 1 to 50 characters (ECG, EEG, ...)")
    if recording_date is None:
        recording_date = recording.start or dt.datetime.now(dt.UTC)
    origin = _as_utc(recording_date)
    frame_rate = float(recording.sampling_rate)
    window = _window_frames(frame_rate, [c.samples_per_frame for c in recording.channels])
    blocks = _blocks([c.samples_per_frame for c in recording.channels])
    windows = _encoded_windows(recording, blocks, window)
    stored = {
        **extra,
        "name": recording.name,
        "file_start": recording.start.isoformat() if recording.start else None,
        "frame_rate": frame_rate,
        "frames": recording.frames,
        "channels": _channel_metadata(recording),
        "event_count": len(recording.events),
        "storage": {"codec": _STORAGE_CODEC, "codec_version": codec.VERSION,
                    "frame_rate": frame_rate, "frames": recording.frames,
                    "window_frames": window, "blocks": blocks},
    }
    with conn.transaction():
        row = conn.execute(_INSERT_RECORDING, (
            recording_type, patient_id, organization_id, origin, recording.duration,
            max(1, round(frame_rate)), len(recording.channels), Jsonb(stored))).fetchone()
        recording_id = uuid.UUID(str(row[0]))
        events = _events_by_window(recording, window, len(windows))
        with conn.cursor() as cur, cur.copy(_COPY_SEGMENTS) as copy:
            for k, (first, end, blobs) in enumerate(windows):
                start_at = _frame_time(origin, first, frame_rate)
                end_at = _frame_time(origin, end, frame_rate)
                for b, (block, blob) in enumerate(zip(blocks, blobs, strict=True)):
                    lead = block[0]
                    notes: dict[str, Any] = {"block": lead, "channels": block}
                    if b == 0 and k in events:
                        notes["events"] = events[k]
                    copy.write_row((recording_id, lead, start_at, end_at, blob, Jsonb(notes)))
                    for member in block[1:]:
                        copy.write_row((recording_id, member, start_at, end_at, None,
                                        Jsonb({"block": lead})))
    stored_bytes = sum(len(b) for _, _, blobs in windows for b in blobs)
    log.info("recording stored recording_id=%s channels=%d frames=%d windows=%d blocks=%d "
             "bytes=%d", recording_id, len(recording.channels), recording.frames,
             len(windows), len(blocks), stored_bytes)
    return recording_id


# --- reading ----------------------------------------------------------------------


def read_window(conn: Any, recording_id: uuid.UUID, *, start: float = 0.0,
                end: float | None = None, channels: Sequence[int] | None = None,
                decoded: ByteLru[Hashable, NDArray[np.int32]] | None = None,
                layout: Layout | None = None) -> dict[int, NDArray[np.int32]]:
    """The digital samples of ``channels`` in the time span ``[start, end)``.

    Channel ``c`` at its own rate ``r`` gives its samples ``i`` with
    ``start <= i / r < end`` (seconds from the recording's first frame), as int32,
    so a faster channel gives proportionally more samples. ``end=None`` means
    the end of the recording; a span past the end is cut to it (possibly empty).
    ``channels=None`` means all, else the indices in the order given (a repeated
    index once). Only the windows overlapping the span are fetched and decoded.
    ``decoded``: a cache of decoded segments by ``(recording, block, window)``
    (a recording's segments never change), so that a viewer scrolling forward
    decodes each segment once rather than once per window it falls in.
    ``layout``: the recording's :data:`Layout`, when the caller has read its row
    already (the API has, to check scope); else it is read here.

    Raises
    ------
    BadRequest
        ``start`` or ``end`` not finite, ``end < start``, or a channel index out of range.
    NotFound
        No recording ``recording_id``.
    """
    if not math.isfinite(start) or (end is not None and not math.isfinite(end)):
        raise BadRequest("start and end must be finite numbers of seconds")
    if end is not None and end < start:
        raise BadRequest(f"end ({end}) is before start ({start})")
    origin, storage, channel_meta = layout or _layout(conn, recording_id)
    frame_rate, frames = float(storage["frame_rate"]), int(storage["frames"])
    window = int(storage["window_frames"])
    lead_of = {c: (block[0], pos) for block in storage["blocks"]
               for pos, c in enumerate(block)}
    asked = range(len(channel_meta)) if channels is None else channels
    bad = [c for c in asked if isinstance(c, bool) or not isinstance(c, int | np.integer)
           or not 0 <= c < len(channel_meta)]
    if bad:
        raise BadRequest(f"channel indices {bad} do not exist; the recording has "
                         f"{len(channel_meta)} channels (0 to {len(channel_meta) - 1})")
    wanted = list(dict.fromkeys(int(c) for c in asked))
    spans: dict[int, tuple[int, int, int]] = {}
    needed: set[tuple[int, int]] = set()
    for c in wanted:
        spf, rate = int(channel_meta[c]["samples_per_frame"]), float(
            channel_meta[c]["sampling_rate"])
        count = frames * spf
        lo = first_sample_at(start, rate, count)
        hi = count if end is None else first_sample_at(end, rate, count)
        hi = max(lo, hi)
        spans[c] = (lo, hi, spf)
        if hi > lo:
            for k in range(lo // spf // window, (hi - 1) // spf // window + 1):
                needed.add((lead_of[c][0], k))
    result = {c: np.empty(spans[c][1] - spans[c][0], dtype=np.int32) for c in wanted}
    blocks = _fetch_blocks(conn, recording_id, origin, frame_rate, window, needed, decoded)
    for c in wanted:
        lo, hi, spf = spans[c]
        lead, pos = lead_of[c]
        out = result[c]
        if hi == lo:
            continue
        for k in range(lo // spf // window, (hi - 1) // spf // window + 1):
            block = blocks[(lead, k)]
            base = k * window * spf
            a, b = max(lo, base), min(hi, base + block.shape[1])
            out[a - lo:b - lo] = block[pos, a - base:b - base]
    return result


Layout = tuple[dt.datetime, Mapping[str, Any], Sequence[Mapping[str, Any]]]
"""What reading needs of a ``recordings`` row: ``recording_date``,
``metadata.storage`` and ``metadata.channels``."""


def _layout(conn: Any, recording_id: uuid.UUID) -> Layout:
    row = conn.execute(_RECORDING_LAYOUT, (recording_id,)).fetchone()
    if row is None:
        raise NotFound(f"no recording {recording_id}")
    return row[0], row[1], row[2]


_EVENTS_QUERY: Final = (
    "SELECT annotations -> 'events' FROM signal_segments "
    "WHERE recording_id = %s AND channel_index = %s AND segment_start >= %s "
    "AND segment_start <= %s AND annotations ? 'events' ORDER BY segment_start")


def read_events(conn: Any, recording_id: uuid.UUID, *, start: float | None = None,
                end: float | None = None, label: str | None = None,
                layout: Layout | None = None) -> list[dict[str, Any]]:
    """The recording's events with ``start <= time < end`` (either bound optional)
    and, if given, this ``label``, in time order. Only the windows that can hold
    them are read (events before the recording's start sit in its first window,
    those after its end in its last).

    Raises
    ------
    NotFound
        No recording ``recording_id``.
    """
    origin, storage, _channels = layout or _layout(conn, recording_id)
    frame_rate, frames = float(storage["frame_rate"]), int(storage["frames"])
    window = int(storage["window_frames"])
    windows = max(1, -(-frames // window))
    k_lo = 0 if start is None else _event_window(start, frame_rate, window, windows)
    k_hi = windows - 1 if end is None else _event_window(end, frame_rate, window, windows)
    if end is not None and end <= 0:
        k_hi = 0
    lead = int(storage["blocks"][0][0])
    found: list[dict[str, Any]] = []
    for (events,) in conn.execute(_EVENTS_QUERY, (
            recording_id, lead, _frame_time(origin, k_lo * window, frame_rate),
            _frame_time(origin, k_hi * window, frame_rate))):
        found.extend(e for e in events
                     if (start is None or e["time"] >= start)
                     and (end is None or e["time"] < end)
                     and (label is None or e["label"] == label))
    return found


def _fetch_blocks(conn: Any, recording_id: uuid.UUID, origin: dt.datetime, frame_rate: float,
                  window: int, needed: set[tuple[int, int]],
                  cache: ByteLru[Hashable, NDArray[np.int32]] | None = None
                  ) -> dict[tuple[int, int], NDArray[np.int32]]:
    """Decode the blobs of ``needed`` ``(lead channel, window index)`` pairs, in one
    query for those the cache does not hold."""
    found: dict[tuple[int, int], NDArray[np.int32]] = {}
    if cache is not None:
        for pair in needed:
            hit = cache.get((recording_id, *pair))
            if hit is not None:
                found[pair] = hit
    rest = needed.difference(found)
    if not rest:
        return found
    found.update(_query_blocks(conn, recording_id, origin, frame_rate, window, rest))
    if cache is not None:
        for pair in rest:
            cache.put((recording_id, *pair), found[pair])
    return found


def _query_blocks(conn: Any, recording_id: uuid.UUID, origin: dt.datetime, frame_rate: float,
                  window: int, needed: set[tuple[int, int]]
                  ) -> dict[tuple[int, int], NDArray[np.int32]]:
    k_lo, k_hi = min(k for _, k in needed), max(k for _, k in needed)
    window_of = {_frame_time(origin, k * window, frame_rate): k for k in range(k_lo, k_hi + 1)}
    leads = sorted({lead for lead, _ in needed})
    blobs: dict[tuple[int, int], bytes] = {}
    for lead, segment_start, blob in conn.execute(
            SEGMENTS_QUERY, (recording_id, min(window_of), max(window_of), leads), binary=True):
        index = window_of.get(segment_start)
        if index is not None and (lead, index) in needed:
            blobs[(lead, index)] = bytes(blob)
    decoded = dict(zip(blobs, _decode_all(list(blobs.values())), strict=True))
    missing = needed.difference(decoded)
    if missing:
        lead, index = min(missing)
        raise RuntimeError(f"recording {recording_id} lacks {len(missing)} segment(s), e.g. "
                           f"block {lead} window {index}; its rows were changed outside Atrium")
    return decoded


_decoders: ThreadPoolExecutor | None = None
_decoders_lock = threading.Lock()


def _decode_all(blobs: list[bytes]) -> list[NDArray[np.int32]]:
    """Decode segments, several at once on as many cores: the codec's loops
    release the GIL, and a 10 s window that straddles two segments then costs
    about one segment's time instead of two."""
    global _decoders
    if len(blobs) < 2:
        return [codec.decode(blob) for blob in blobs]
    with _decoders_lock:
        if _decoders is None:
            _decoders = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                           thread_name_prefix="atrium-signal-decode")
    return list(_decoders.map(codec.decode, blobs))


# --- display ----------------------------------------------------------------------


def decimation_edges(n: int, max_points: int) -> NDArray[np.int64]:
    """Bucket boundaries :func:`min_max_decimate` uses for ``n`` samples:
    ``max_points // 2`` buckets of nearly equal size (bucket ``b`` is
    ``[edges[b], edges[b + 1])``), or one bucket per sample when ``n <= max_points``."""
    if max_points < 2:
        raise ValueError("max_points must be at least 2 (a minimum and a maximum)")
    buckets = n if n <= max_points else max_points // 2
    return (np.arange(buckets + 1, dtype=np.int64) * n) // max(buckets, 1)


def min_max_decimate(samples: NDArray[Any], max_points: int
                     ) -> tuple[NDArray[np.int64], NDArray[Any]]:
    """Reduce ``samples`` to at most ``max_points`` points for display.

    The samples are cut into ``max_points // 2`` buckets of nearly equal length
    (:func:`decimation_edges`); each bucket contributes its minimum and its
    maximum (the first occurrence of each), in time order, or one point when
    they are the same sample — so a one-sample spike is never lost. When
    ``len(samples) <= max_points`` every sample is kept.

    Returns
    -------
    (indices, values)
        ``indices`` (int64, strictly increasing) are positions in ``samples``;
        the caller turns them into times (``(first + index) / rate``).
        ``values`` is ``samples[indices]``.

    Raises
    ------
    ValueError
        ``max_points < 2`` or ``samples`` not one-dimensional.
    """
    values = np.asarray(samples)
    if values.ndim != 1:
        raise ValueError("samples must be one-dimensional")
    n = values.size
    edges = decimation_edges(n, max_points)
    if n <= max_points:
        return np.arange(n, dtype=np.int64), values.copy()
    starts = edges[:-1]
    bucket = np.repeat(np.arange(starts.size), np.diff(edges))
    picks = []
    for reduce in (np.minimum, np.maximum):
        extreme = reduce.reduceat(values, starts)
        hits = np.flatnonzero(values == extreme[bucket])
        _, first = np.unique(bucket[hits], return_index=True)
        picks.append(hits[first])
    indices = np.unique(np.concatenate(picks)).astype(np.int64)
    return indices, values[indices]
