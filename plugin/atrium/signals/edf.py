"""EDF, EDF+ and BDF files, read from bytes and written back.

Read: :func:`read_edf` gives a :class:`~atrium.signals.model.Recording`. Each
signal keeps every sample at its own rate: the recording's frame rate is the
greatest common divisor of the signals' samples per data record, divided by
the record's duration, and a signal's ``samples_per_frame`` is its samples per
record over that divisor. The EDF+ (``EDF Annotations``) and BDF+ (``BDF
Annotations``) channels become events (onset, duration, text; the
time-keeping TAL of each record is not an event). EDF+D files whose records
follow each other without gaps are read like EDF+C; gaps are refused (415).

Write: :func:`write_edf` gives an EDF+C file (a BDF+C one when a sample does
not fit 16 bits) that pyedflib and EDFbrowser read with the same digital
samples and the events as annotations.

Every failure is an :mod:`atrium.errors` value: not EDF/BDF → 415; a header
field that does not parse, sizes that do not match the file, a record
duration of 0, more than :data:`MAX_CHANNELS` signals or
:data:`MAX_SAMPLES` samples → 400 naming the field.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import cast

import numpy as np

from atrium.errors import BadRequest, UnsupportedMediaType
from atrium.signals.model import Channel, EdfRange, Event, Recording

__all__ = ["MAX_CHANNELS", "MAX_SAMPLES", "is_annotation_only", "read_edf",
           "read_edf_annotations", "write_edf"]

MAX_CHANNELS = 4096
MAX_SAMPLES = 2**31
"""The most samples a file may declare, all signals together."""

_EDF_VERSION = b"0       "
_BDF_VERSION = b"\xffBIOSEMI"
_ANNOTATION_LABELS = ("EDF Annotations", "BDF Annotations")
_EXACT_SEARCH = 10_000
# EDF headers are ASCII: the usual units are spelled as EDF+ recommends.
_ASCII = {"µ": "u", "μ": "u", "°": "deg", "Ω": "Ohm"}
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
# A TAL: +onset[\x15duration]\x14[annotation\x14]* (the texts may be empty).
_TAL = re.compile(rb"([+-]\d+(?:\.\d*)?)(?:\x15(\d+(?:\.\d*)?))?\x14(.*?)\x14?$", re.S)


def _bad(what: str) -> BadRequest:
    return BadRequest(f"the EDF file {what}")


@dataclass(frozen=True)
class _Signal:
    label: str
    transducer: str
    units: str
    physical_min: float
    physical_max: float
    digital_min: int
    digital_max: int
    prefilter: str
    per_record: int


class _Fields:
    """Reads the fixed-width ASCII fields of the header, naming a field that fails."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def text(self, width: int) -> str:
        raw = self.data[self.at:self.at + width]
        self.at += width
        return raw.decode("latin-1").strip()

    def texts(self, count: int, width: int) -> list[str]:
        return [self.text(width) for _ in range(count)]

    @staticmethod
    def number(value: str, what: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise _bad(f"has a {what} that is not a number; the header is damaged") from None
        if not math.isfinite(number):
            raise _bad(f"has a {what} that is not a finite number")
        return number

    @staticmethod
    def integer(value: str, what: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise _bad(f"has a {what} that is not an integer; the header is damaged") from None


def read_edf(data: bytes, name: str = "recording") -> Recording:
    """Read an EDF, EDF+ or BDF(+) file; ``name`` becomes the record name.

    Raises
    ------
    UnsupportedMediaType
        Not an EDF or BDF file, or an EDF+D file with gaps between records.
    BadRequest
        A damaged header, sizes that do not match the data, a limit passed.
    """
    return cast(Recording, _read(data, name, None))


@dataclass(frozen=True)
class _Header:
    bdf: bool
    recording_id: str
    start_date: str
    start_time: str
    size: int
    reserved: str
    records: int
    record_seconds: float
    signals: list[_Signal]

    @property
    def width(self) -> int:
        """Bytes per sample."""
        return 3 if self.bdf else 2


def _header(data: bytes) -> _Header:
    """The header, checked against the limits and the file's length."""
    if len(data) < 256 or data[:8] not in (_EDF_VERSION, _BDF_VERSION):
        raise UnsupportedMediaType("the file is not EDF, EDF+ or BDF (its first 8 bytes are "
                                   "not an EDF or BDF version)")
    fields = _Fields(data)
    fields.at = 8
    fields.text(80)  # patient: not kept here (PHI); the API takes patient_id
    recording_id = fields.text(80)
    start_date, start_time = fields.text(8), fields.text(8)
    size = fields.integer(fields.text(8), "header size")
    reserved = fields.text(44)
    records = fields.integer(fields.text(8), "number of data records")
    record_seconds = fields.number(fields.text(8), "data record duration")
    count = fields.integer(fields.text(4), "number of signals")
    if not 1 <= count <= MAX_CHANNELS:
        raise _bad(f"declares {count} signals; between 1 and {MAX_CHANNELS} are accepted")
    if size != 256 * (count + 1) or len(data) < size:
        raise _bad(f"declares a header of {size} bytes, which does not match its "
                   f"{count} signals or the file; the header is damaged")
    labels = fields.texts(count, 16)
    transducers = fields.texts(count, 80)
    units = fields.texts(count, 8)
    pmin = [fields.number(v, "physical minimum") for v in fields.texts(count, 8)]
    pmax = [fields.number(v, "physical maximum") for v in fields.texts(count, 8)]
    dmin = [fields.integer(v, "digital minimum") for v in fields.texts(count, 8)]
    dmax = [fields.integer(v, "digital maximum") for v in fields.texts(count, 8)]
    prefilters = fields.texts(count, 80)
    per_record = [fields.integer(v, "number of samples per record")
                  for v in fields.texts(count, 8)]
    if any(n < 1 for n in per_record):
        raise _bad("declares a signal with no samples per data record")
    signals = [_Signal(*row) for row in zip(labels, transducers, units, pmin, pmax, dmin, dmax,
                                            prefilters, per_record, strict=True)]
    bdf = data[:8] == _BDF_VERSION
    record_samples = sum(per_record)
    record_bytes = record_samples * (3 if bdf else 2)
    if records == -1:  # still being recorded when the header was written
        records = (len(data) - size) // record_bytes
    if records < 0 or records * record_samples > MAX_SAMPLES:
        raise _bad(f"declares {records} data records; at most {MAX_SAMPLES} samples "
                   "in all are accepted")
    if len(data) != size + records * record_bytes:
        raise _bad(f"is {len(data)} bytes long but its header declares "
                   f"{size + records * record_bytes}: it is truncated or damaged; "
                   "upload the complete file")
    return _Header(bdf, recording_id, start_date, start_time, size, reserved, records,
                   record_seconds, signals)


def is_annotation_only(data: bytes) -> bool:
    """Whether an EDF+/BDF+ file holds annotations and no signal (a hypnogram).

    Raises the errors of :func:`read_edf` for a file that is not EDF or is damaged.
    """
    return all(s.label in _ANNOTATION_LABELS for s in _header(data).signals)


def _read(data: bytes, name: str, events_rate: float | None) -> Recording | list[Event]:
    """The recording, or only its events (at ``events_rate``) when that is given."""
    header = _header(data)
    signals, records, record_seconds = header.signals, header.records, header.record_seconds
    width, bdf = header.width, header.bdf
    record_bytes = sum(s.per_record for s in signals) * width
    annotation = [s.label in _ANNOTATION_LABELS for s in signals]
    ordinary = [s for s, a in zip(signals, annotation, strict=True) if not a]
    if not ordinary:
        if events_rate is None:
            raise _bad("holds annotations only; upload it together with the recording "
                       "it annotates")
    elif record_seconds <= 0:
        raise _bad("declares a data record duration of 0, so a sampling rate of 0; "
                   "the header is damaged")
    for s in ordinary:
        if s.digital_max <= s.digital_min or s.physical_max == s.physical_min \
                or not math.isfinite(_gain(s)):
            raise _bad(f"gives signal '{s.label}' a digital or physical range of zero width; "
                       "the header is damaged")
    body = np.frombuffer(data, np.uint8, offset=header.size).reshape(records, record_bytes)
    columns: list[np.ndarray] = []
    onsets: list[str] = []
    start = 0
    for s, is_annotation in zip(signals, annotation, strict=True):
        raw = body[:, start * width:(start + s.per_record) * width]
        start += s.per_record
        if is_annotation:
            columns.append(raw)
        elif events_rate is not None:
            columns.append(np.empty(0, np.int32))  # annotations wanted: skip decoding
        elif bdf:
            b = raw.reshape(-1, 3).astype(np.int32)
            value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            columns.append(value - ((value & 0x800000) << 1))
        else:
            # Kept as int16, the file's own width: a 24 h Holter is half the memory.
            columns.append(np.ascontiguousarray(raw).view("<i2").reshape(-1))
    frames_per_record = reduce(math.gcd, (s.per_record for s in ordinary), 0)
    rate = events_rate if events_rate is not None else frames_per_record / record_seconds
    events: list[Event] = []
    for column, is_annotation in zip(columns, annotation, strict=True):
        if is_annotation:
            events.extend(_annotations(column, rate, onsets))
    if header.reserved.startswith(("EDF+D", "BDF+D")) and ordinary:
        _refuse_gaps(onsets, record_seconds)
    events.sort(key=lambda event: event.time)
    if events_rate is not None:
        return events
    channels = tuple(
        Channel(name=s.label, units=s.units, gain=_gain(s), baseline=_baseline(s),
                adc_resolution=8 * width, samples_per_frame=s.per_record // frames_per_record,
                sampling_rate=s.per_record / record_seconds, samples=column,
                transducer=s.transducer, prefilter=s.prefilter,
                edf_range=EdfRange(s.physical_min, s.physical_max, s.digital_min,
                                   s.digital_max))
        for s, column, a in zip(signals, columns, annotation, strict=True) if not a)
    return Recording(name=name, sampling_rate=rate, frames=records * frames_per_record,
                     channels=channels,
                     start=_start(header.start_date, header.start_time, header.recording_id),
                     events=tuple(events))


def read_edf_annotations(data: bytes, sampling_rate: float) -> list[Event]:
    """The EDF+/BDF+ annotations of a file (one with signals or annotations only, as
    a Sleep-EDF hypnogram), in time order; ``sample`` counts frames at
    ``sampling_rate``, the rate of the recording they annotate.

    Raises the errors of :func:`read_edf`.
    """
    return cast(list[Event], _read(data, "annotations", sampling_rate))


def _gain(s: _Signal) -> float:
    return (s.digital_max - s.digital_min) / (s.physical_max - s.physical_min)


def _baseline(s: _Signal) -> float:
    return s.digital_min - s.physical_min * _gain(s)


def _annotations(raw: np.ndarray, rate: float, onsets: list[str]) -> list[Event]:
    """The events of an annotation signal's bytes, one row per data record.

    The first TAL of each record keeps time (its onset is the record's start,
    appended to ``onsets``); every non-empty text of every TAL is an event.
    """
    events: list[Event] = []
    for row in raw:
        tals = bytes(row).split(b"\x00")
        first = True
        for tal in tals:
            if not tal:
                continue
            match = _TAL.match(tal)
            if match is None:
                raise _bad("has an annotation that is not a valid EDF+ TAL; "
                           "the annotation signal is damaged")
            onset = float(match.group(1))
            duration = float(match.group(2)) if match.group(2) else None
            texts = match.group(3).split(b"\x14")
            if first:
                onsets.append(match.group(1).decode())
                texts = texts[1:]  # the time-keeping TAL's own (empty) annotation
                first = False
            for text in texts:
                if text:
                    label = text.decode("utf-8", "replace")
                    events.append(Event(time=onset, sample=round(onset * rate), label=label,
                                        duration=duration))
    return events


def _refuse_gaps(onsets: Sequence[str], record_seconds: float) -> None:
    for index, onset in enumerate(onsets):
        if abs(float(onset) - float(onsets[0]) - index * record_seconds) > 1e-6:
            raise UnsupportedMediaType(
                "the EDF+D file has gaps between its data records, which are not "
                "supported; upload each continuous part as a recording of its own")


def _start(date: str, time: str, recording_id: str) -> dt.datetime | None:
    """The start from the header: ``dd.mm.yy`` (85-99 → 19yy) at ``hh.mm.ss``; the
    4-digit year of an EDF+ ``Startdate dd-MMM-yyyy`` wins when present."""
    try:
        day, month, year = (int(part) for part in date.split("."))
        hour, minute, second = (int(part) for part in time.split("."))
        year += 1900 if year >= 85 else 2000
        parts = recording_id.split()
        if len(parts) > 1 and parts[0] == "Startdate" and parts[1] != "X":
            year = int(parts[1].split("-")[2])
        return dt.datetime(year, month, day, hour, minute, second)
    except (ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- write


def _text(value: str, width: int) -> bytes:
    """``value`` as the header's printable ASCII, cut or space-padded to ``width``."""
    for unicode, ascii_text in _ASCII.items():
        value = value.replace(unicode, ascii_text)
    printable = "".join(c if " " <= c <= "~" else "?" for c in value)
    return printable.encode("ascii")[:width].ljust(width)


def _edf_number(value: float, what: str) -> str:
    """``value`` in at most 8 characters, as precisely as they allow."""
    for decimals in range(7, -1, -1):
        text = f"{value:.{decimals}f}"
        if decimals:
            text = text.rstrip("0").rstrip(".")
        if text == "-0":
            text = "0"
        if len(text) <= 8:
            return text
    raise BadRequest(f"the recording's {what} does not fit the 8 characters of an EDF header; "
                     "export it as WFDB")


def _record_frames(rate: float, frames: int) -> int:
    """Frames per data record: a record duration EDF can state exactly, about a
    second long, dividing the frames when one can (else the last record is padded)."""
    longest = max(1, int(rate))
    exact = [f for f in range(longest, 0, -1)
             if float(_edf_number(f / rate, "record duration")) * rate == f]
    for f in exact:
        if f * 10 >= longest and frames % f == 0:
            return f
    return exact[0] if exact else longest


def write_edf(recording: Recording) -> bytes:
    """The recording as an EDF+C file, or BDF+C when a sample needs more than 16 bits.

    Each channel's digital range is its EDF range when it came from EDF and
    holds the samples, else the samples' own range; the physical range follows
    from gain and baseline, rounded to the 8 characters EDF allows. When no
    record length divides the recording, the last data record is padded by
    repeating each channel's last sample. Events become EDF+ annotations
    (onset, duration, and ``label`` or ``"label text"`` when there is text).

    Raises
    ------
    BadRequest
        A sample needs more than 24 bits, or a number does not fit the header.
    """
    channels = recording.channels
    low = min((int(c.samples.min()) for c in channels if c.samples.size), default=0)
    high = max((int(c.samples.max()) for c in channels if c.samples.size), default=0)
    bdf = not (low >= -(2**15) and high < 2**15)
    if bdf and not (low >= -(2**23) and high < 2**23):
        raise BadRequest("the recording has samples wider than 24 bits, which EDF and BDF "
                         "cannot hold; export it as WFDB")
    width, limit = (3, 2**23) if bdf else (2, 2**15)
    per = _record_frames(recording.sampling_rate, recording.frames)
    records = max(1, -(-recording.frames // per))
    seconds = _edf_number(per / recording.sampling_rate, "record duration")
    tals = _tal_bytes(recording.events, records, float(seconds))
    ann_samples = max(len(t) for t in tals) // width + 1
    columns = [_padded(c, records * per) for c in channels]
    heads = [_channel_header(c, limit) for c in channels]
    count = len(channels) + 1
    start = recording.start
    header = b"".join([
        _BDF_VERSION if bdf else _text("0", 8),
        _text("X X X X", 80),
        _text(f"Startdate {start.day:02d}-{_MONTHS[start.month - 1]}-{start.year} X X X"
              if start else "Startdate X X X X", 80),
        _text(f"{start:%d.%m.%y}" if start else "01.01.85", 8),
        _text(f"{start:%H.%M.%S}" if start else "00.00.00", 8),
        _text(str(256 * (count + 1)), 8),
        _text("BDF+C" if bdf else "EDF+C", 44),
        _text(str(records), 8), _text(seconds, 8), _text(str(count), 4),
        *(_text(h[0], 16) for h in heads), _text("BDF Annotations" if bdf else
                                                 "EDF Annotations", 16),
        *(_text(c.transducer, 80) for c in channels), _text("", 80),
        *(_text(c.units, 8) for c in channels), _text("", 8),
        *(_text(h[1], 8) for h in heads), _text("-1", 8),
        *(_text(h[2], 8) for h in heads), _text("1", 8),
        *(_text(h[3], 8) for h in heads), _text(str(-limit), 8),
        *(_text(h[4], 8) for h in heads), _text(str(limit - 1), 8),
        *(_text(c.prefilter, 80) for c in channels), _text("", 80),
        *(_text(str(c.samples_per_frame * per), 8) for c in channels),
        _text(str(ann_samples), 8),
        _text("", 32 * count),
    ])
    body = np.zeros((records, sum(c.samples_per_frame * per for c in channels) * width
                     + ann_samples * width), np.uint8)
    at = 0
    for channel, column in zip(channels, columns, strict=True):
        n = channel.samples_per_frame * per
        body[:, at:at + n * width] = _encode(column.reshape(records, n), width)
        at += n * width
    for index, tal in enumerate(tals):
        body[index, at:at + len(tal)] = np.frombuffer(tal, np.uint8)
    return header + body.tobytes()


def _channel_header(channel: Channel, limit: int) -> tuple[str, str, str, str, str]:
    """Label, physical min/max and digital min/max of a channel, as header text."""
    samples = channel.samples
    low = int(samples.min()) if samples.size else 0
    high = int(samples.max()) if samples.size else 0
    r = channel.edf_range
    if r is not None and r.digital_min <= low and high <= r.digital_max:
        dmin, dmax = r.digital_min, r.digital_max
        texts = (_edf_number(r.physical_min, "physical minimum"),
                 _edf_number(r.physical_max, "physical maximum"))
    else:
        dmin, dmax = low, max(high, low + 1)
        if dmax >= limit:
            dmin, dmax = dmax - 1, dmax
        # Widen the digital range (within the format) to ends whose physical values
        # EDF's 8 characters state exactly: the line through them is then the channel's.
        dmin, low_text = _exact_end(dmin, -1, channel, -limit)
        dmax, high_text = _exact_end(dmax, 1, channel, limit - 1)
        texts = low_text, high_text
    if texts[0] == texts[1]:  # a range below the header's precision: take the widest
        dmin, dmax = -limit, limit - 1
        texts = (_edf_number((dmin - channel.baseline) / channel.gain, "physical minimum"),
                 _edf_number((dmax - channel.baseline) / channel.gain, "physical maximum"))
    return channel.name, texts[0], texts[1], str(dmin), str(dmax)


def _exact_end(digital: int, step: int, channel: Channel, bound: int) -> tuple[int, str]:
    """The digital value nearest ``digital`` (moving by ``step``, not past ``bound``)
    whose physical value fits the header exactly, and that text; else ``digital``
    and its physical value rounded."""
    for _ in range(_EXACT_SEARCH):
        physical = (digital - channel.baseline) / channel.gain
        text = _edf_number(physical, "physical range")
        if float(text) == physical or digital == bound:
            return digital, text
        digital += step
    return digital - step * _EXACT_SEARCH, _edf_number(
        (digital - step * _EXACT_SEARCH - channel.baseline) / channel.gain, "physical range")


def _padded(channel: Channel, frames: int) -> np.ndarray:
    n = frames * channel.samples_per_frame
    samples = channel.samples
    if samples.size >= n:
        return samples[:n]
    fill = samples[-1] if samples.size else 0
    return np.concatenate([samples, np.full(n - samples.size, fill, samples.dtype)])


def _encode(values: np.ndarray, width: int) -> np.ndarray:
    v = values.astype(np.int64)
    if width == 2:
        return v.astype("<i2").view(np.uint8).reshape(v.shape[0], -1)
    u = v & 0xFFFFFF
    return np.stack([u & 0xFF, (u >> 8) & 0xFF, u >> 16], -1).astype(np.uint8).reshape(
        v.shape[0], -1)


def _seconds(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _tal_bytes(events: Sequence[Event], records: int, seconds: float) -> list[bytes]:
    """Each data record's annotation bytes: its time-keeping TAL, then the TALs of
    the events whose onset falls in it (those before 0 in the first record, those
    past the end in the last)."""
    tals = [f"+{_seconds(i * seconds)}\x14\x14\x00".encode() for i in range(records)]
    for event in sorted(events, key=lambda e: e.time):
        index = min(records - 1, max(0, int(event.time // seconds)))
        onset = _seconds(event.time)
        onset = onset if onset.startswith("-") else "+" + onset
        duration = f"\x15{_seconds(event.duration)}" if event.duration is not None else ""
        text = f"{event.label} {event.text}" if event.text else event.label
        body = text.replace("\x14", " ").replace("\x00", " ").replace("\x15", " ") + "\x14"
        tals[index] += f"{onset}{duration}\x14{body}\x00".encode()
    return tals
