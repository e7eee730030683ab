"""WFDB records (PhysioNet): ``.hea`` headers, ``.dat`` signal files and MIT
annotation files (``.atr`` …), read from bytes and written back.

Read: :func:`read_wfdb` takes every uploaded file by name and gives a
:class:`~atrium.signals.model.Recording`. Single-segment records only; the
signal formats 8, 16, 61, 80, 160, 212, 310, 311, 24 and 32, each with samples
per frame, skew and byte offsets. A header checksum is verified. Files named
``<record>.<ext>`` that the header does not reference are read as annotation
files (MIT format: SKIP, NUM, SUB, CHN and AUX fields).

Write: :func:`write_wfdb` gives ``{file name: bytes}`` — a ``.hea``, one ``.dat``
in the smallest of formats 212, 16, 24 or 32 that holds every sample, and an
``.atr`` when there are events — which ``wfdb.rdrecord``/``rdann`` read back
with the same digital samples.

Every failure is an :mod:`atrium.errors` value: a format, a multi-segment record
or a null signal → 415; a missing or truncated file, a header that does not
parse, a checksum that does not match, a declared size past a limit → 400
naming the file and what to do. Sizes are checked against the limits and the
data before anything is allocated.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from atrium.errors import BadRequest, UnsupportedMediaType
from atrium.signals.model import Channel, Event, Recording

__all__ = ["FORMATS", "MAX_CHANNELS", "MAX_SAMPLES", "LABELS", "read_annotations",
           "read_wfdb", "write_annotations", "write_wfdb"]

MAX_CHANNELS = 4096
MAX_SAMPLES = 2**31
"""The most samples a record may declare, all channels together."""
_MAX_ANNOTATION_BYTES = 256 * 1024 * 1024
_MAX_HEADER_BYTES = 4 * 1024 * 1024

# Bits per sample; the packed formats 212, 310 and 311 are decoded in groups.
FORMATS: dict[int, int] = {8: 8, 16: 16, 61: 16, 80: 8, 160: 16, 212: 12, 310: 10, 311: 10,
                           24: 24, 32: 32}
# The value WFDB reads for a skewed sample past the end of the file ("invalid").
_INVALID = {8: -(2**31), 16: -(2**15), 61: -(2**15), 80: -(2**7), 160: -(2**15),
            212: -(2**11), 310: -(2**9), 311: -(2**9), 24: -(2**23), 32: -(2**31)}
_DEFAULT_GAIN = 200.0
_DEFAULT_FS = 250.0

# MIT annotation codes → symbols (WFDB's ecgcodes.h); codes without one read as "[n]".
LABELS: dict[int, str] = {
    0: " ", 1: "N", 2: "L", 3: "R", 4: "a", 5: "V", 6: "F", 7: "J", 8: "A", 9: "S", 10: "E",
    11: "j", 12: "/", 13: "Q", 14: "~", 16: "|", 18: "s", 19: "T", 20: "*", 21: "D",
    22: '"', 23: "=", 24: "p", 25: "B", 26: "^", 27: "t", 28: "+", 29: "u", 30: "?", 31: "!",
    32: "[", 33: "]", 34: "e", 35: "n", 36: "@", 37: "x", 38: "f", 39: "(", 40: ")", 41: "r",
}
_CODES = {symbol: code for code, symbol in LABELS.items()}
_NOTE = 22
_SKIP, _NUM, _SUB, _CHN, _AUX = 59, 60, 61, 62, 63

_FORMAT_SPEC = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_GAIN_SPEC = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
                        r"(?:\(([-+]?\d+)\))?(?:/(\S*))?$")
_RECORD_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class _Signal:
    file: str
    fmt: int
    spf: int
    skew: int
    offset: int
    gain: float
    baseline: int
    units: str
    adc_res: int
    init: int | None
    checksum: int | None
    name: str


def _bad(file: str, what: str) -> BadRequest:
    return BadRequest(f"WFDB file '{file}' {what}")


# --------------------------------------------------------------------------- header


def _int(token: str, file: str, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise _bad(file, f"has a {what} that is not an integer; check the header") from None


def _parse_record_line(tokens: list[str], file: str
                       ) -> tuple[str, int, float, int | None, dt.datetime | None]:
    name = tokens[0]
    if "/" in name:
        raise UnsupportedMediaType(
            f"'{file}' is a multi-segment WFDB record, which is not supported; "
            "upload each segment as a record of its own")
    if len(tokens) < 2:
        raise _bad(file, "does not declare its number of signals")
    nsig = _int(tokens[1], file, "number of signals")
    fs = _DEFAULT_FS
    if len(tokens) > 2:
        try:
            fs = float(tokens[2].split("/")[0])
        except ValueError:
            raise _bad(file, "has a sampling frequency that is not a number") from None
    if not math.isfinite(fs) or fs <= 0:
        raise _bad(file, "declares a sampling frequency of 0 (or a negative or infinite "
                   "one); give the frequency in samples per second")
    nsamp = _int(tokens[3], file, "number of samples") if len(tokens) > 3 else None
    if nsamp is not None and nsamp < 0:
        raise _bad(file, "declares a negative number of samples")
    return name, nsig, fs, nsamp or None, _base_time(tokens[4:6], file)


def _base_time(tokens: list[str], file: str) -> dt.datetime | None:
    if not tokens:
        return None
    try:
        clock = [float(part) for part in tokens[0].split(":")]
        while len(clock) < 3:
            clock.insert(0, 0.0)
        hours, minutes, seconds = clock
        if len(tokens) < 2:  # a time of day without a date is no start
            return None
        d, m, y = (int(part) for part in tokens[1].split("/"))
        return dt.datetime(y, m, d) + dt.timedelta(
            hours=hours, minutes=minutes, seconds=seconds)
    except (ValueError, OverflowError, TypeError):
        raise _bad(file, "has a base time or date that does not parse "
                   "(expected HH:MM:SS and DD/MM/YYYY)") from None


def _parse_signal_line(line: str, index: int, file: str) -> _Signal:
    tokens = line.split(None, 8)
    if len(tokens) < 2:
        raise _bad(file, f"has a signal line {index + 1} without a format")
    spec = _FORMAT_SPEC.match(tokens[1])
    if spec is None:
        raise _bad(file, f"has a format '{tokens[1][:20]}' on signal line {index + 1} "
                   "that does not parse")
    fmt = int(spec.group(1))
    if fmt not in FORMATS:
        raise UnsupportedMediaType(
            f"WFDB signal format {fmt} in '{file}' is not supported; the formats read are "
            f"{', '.join(map(str, sorted(FORMATS)))} (convert with the WFDB tool xform)")
    if tokens[0] == "~":
        raise UnsupportedMediaType(f"'{file}' declares a null signal ('~'), "
                                   "which is not supported")
    spf = int(spec.group(2) or 1)
    if spf < 1:
        raise _bad(file, f"declares 0 samples per frame on signal line {index + 1}")
    adc_res = _int(tokens[3], file, "ADC resolution") if len(tokens) > 3 else 0
    adc_zero = _int(tokens[4], file, "ADC zero") if len(tokens) > 4 else 0
    gain, baseline, units = _DEFAULT_GAIN, adc_zero, "mV"
    if len(tokens) > 2:
        match = _GAIN_SPEC.match(tokens[2])
        if match is None:
            raise _bad(file, f"has a gain '{tokens[2][:20]}' on signal line {index + 1} "
                       "that does not parse")
        gain = float(match.group(1)) or _DEFAULT_GAIN  # WFDB: a gain of 0 means 200
        if not math.isfinite(gain):
            raise _bad(file, f"has a gain on signal line {index + 1} that is not finite")
        if match.group(2) is not None:
            baseline = int(match.group(2))
        units = match.group(3) or "mV"
    init = _int(tokens[5], file, "initial value") if len(tokens) > 5 else None
    checksum = _int(tokens[6], file, "checksum") if len(tokens) > 6 else None
    name = tokens[8].strip() if len(tokens) > 8 else f"signal {index}"
    file_name = tokens[0].replace("\\", "/").rsplit("/", 1)[-1]  # uploads match by base name
    return _Signal(file_name, fmt, spf, int(spec.group(3) or 0), int(spec.group(4) or 0),
                   gain, baseline, units, adc_res, init, checksum, name)


def _lines(data: bytes, file: str) -> list[str]:
    if len(data) > _MAX_HEADER_BYTES:
        raise _bad(file, "is larger than a WFDB header can be; upload the record's .hea file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if "\x00" in text:
        raise _bad(file, "is not a text header; upload the record's .hea file")
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


# --------------------------------------------------------------------------- samples


def _samples_in(fmt: int, nbytes: int) -> int:
    """How many whole samples ``nbytes`` bytes of format ``fmt`` hold."""
    if fmt == 212:
        return 2 * (nbytes // 3) + (1 if nbytes % 3 >= 2 else 0)
    if fmt == 310:
        return 3 * (nbytes // 4) + (1 if nbytes % 4 >= 2 else 0)
    if fmt == 311:
        return 3 * (nbytes // 4) + (0, 0, 1, 2)[nbytes % 4]
    return nbytes // (FORMATS[fmt] // 8)


def _sign(values: np.ndarray, bits: int) -> np.ndarray:
    values = values.astype(np.int32)
    return values - ((values & (1 << (bits - 1))) << 1)


def _decode(fmt: int, raw: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` samples (flat, interleaved) of ``raw`` bytes, as int32.

    Format 8 gives the first differences; :func:`_read_dat` integrates them.
    """
    if fmt in (16, 61, 160):
        dtype = {16: "<i2", 61: ">i2", 160: "<u2"}[fmt]
        values = raw[:2 * count].view(dtype).astype(np.int32)
        return values - 32768 if fmt == 160 else values
    if fmt == 32:
        return raw[:4 * count].view("<i4").astype(np.int32)
    if fmt == 8:
        return raw[:count].view(np.int8).astype(np.int32)
    if fmt == 80:
        return raw[:count].astype(np.int32) - 128
    if fmt == 24:
        b = raw[:3 * count].reshape(-1, 3).astype(np.int32)
        return _sign(b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16), 24)
    group, per = (3, 2) if fmt == 212 else (4, 3)
    groups = -(-count // per)
    padded = np.zeros(groups * group, np.uint8)
    used = min(raw.size, padded.size)
    padded[:used] = raw[:used]
    b = padded.reshape(-1, group).astype(np.int32)
    if fmt == 212:
        out = np.stack([b[:, 0] | ((b[:, 1] & 0x0F) << 8), b[:, 2] | ((b[:, 1] & 0xF0) << 4)], 1)
        return _sign(out.reshape(-1)[:count], 12)
    if fmt == 310:
        w0, w1 = b[:, 0] | (b[:, 1] << 8), b[:, 2] | (b[:, 3] << 8)
        out = np.stack([(w0 >> 1) & 0x3FF, (w1 >> 1) & 0x3FF,
                        ((w0 >> 11) & 0x1F) | (((w1 >> 11) & 0x1F) << 5)], 1)
    else:  # 311
        word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)
        out = np.stack([word & 0x3FF, (word >> 10) & 0x3FF, (word >> 20) & 0x3FF], 1)
    return _sign(out.reshape(-1)[:count], 10)


def _read_dat(file: str, data: bytes, signals: Sequence[_Signal], frames: int
              ) -> list[np.ndarray]:
    """The samples of the signals stored in one ``.dat`` file, skew applied."""
    fmt = signals[0].fmt
    if any(signal.fmt != fmt for signal in signals):
        raise _bad(file, "is declared with more than one format; a signal file has one format")
    offset = signals[0].offset
    spf = [signal.spf for signal in signals]
    frame_size = sum(spf)
    raw = np.frombuffer(data, np.uint8)[offset:]
    stored_frames = _samples_in(fmt, raw.size) // frame_size
    if stored_frames < frames:
        raise _bad(file, f"is truncated: it holds {stored_frames} of the {frames} frames "
                   "the header declares; upload the complete file")
    flat = _decode(fmt, raw, frames * frame_size).reshape(frames, frame_size)
    out: list[np.ndarray] = []
    start = 0
    for signal, n in zip(signals, spf, strict=True):
        column = flat[:, start:start + n].reshape(-1)
        start += n
        if fmt == 8:
            column = np.cumsum(column, dtype=np.int64) + (signal.init or 0)
            column = column.astype(np.int32)
        samples = np.full(frames * n, _INVALID[fmt], np.int32)
        # WFDB: sample t of a skewed signal is stored in frame t + skew. Past the
        # declared length it reads as the format's invalid value, as wfdb-python
        # reads it, even when the file holds more frames.
        kept = column[signal.skew * n:signal.skew * n + frames * n]
        samples[:kept.size] = kept
        out.append(samples)
    return out


def _check_sum(samples: np.ndarray, signal: _Signal, file: str) -> None:
    if signal.checksum is None:
        return
    total = int(samples.sum(dtype=np.int64))
    if (total - signal.checksum) % 65536:
        raise _bad(file, f"fails the checksum of signal '{signal.name}': the samples are "
                   "not those the header was written for; upload the record's original files")


# --------------------------------------------------------------------------- read


def read_wfdb(files: Mapping[str, bytes]) -> Recording:
    """Read a WFDB record from its uploaded files, by file name.

    ``files`` must hold exactly one ``.hea``; the ``.dat`` files it names (by
    base name, any directory part of an upload name is ignored); and optionally
    annotation files ``<record>.<ext>`` (``.atr``, ``.qrs``, …) whose events are
    merged in time order.

    Raises
    ------
    BadRequest
        A file is missing, truncated, larger than the limits or inconsistent.
    UnsupportedMediaType
        A multi-segment record, a null signal or a signal format not read.
    """
    by_name = {name.replace("\\", "/").rsplit("/", 1)[-1]: data for name, data in files.items()}
    headers = [name for name in by_name if name.lower().endswith(".hea")]
    if len(headers) != 1:
        raise BadRequest(f"a WFDB upload needs exactly one .hea header file, not {len(headers)}")
    header = headers[0]
    lines = _lines(by_name[header], header)
    if not lines:
        raise _bad(header, "is empty; upload the record's .hea file")
    record, nsig, fs, nsamp, start = _parse_record_line(lines[0].split(), header)
    if nsig < 1 or nsig > MAX_CHANNELS:
        raise _bad(header, f"declares {nsig} signals; between 1 and {MAX_CHANNELS} are accepted")
    if len(lines) < nsig + 1:
        raise _bad(header, f"declares {nsig} signals but describes {len(lines) - 1}")
    signals = [_parse_signal_line(lines[i + 1], i, header) for i in range(nsig)]
    missing = sorted({s.file for s in signals} - set(by_name))
    if missing:
        raise BadRequest(f"the WFDB header '{header}' names the signal file '{missing[0]}', "
                         "which is not in the upload; add it")
    groups: dict[str, list[int]] = {}
    for index, signal in enumerate(signals):
        groups.setdefault(signal.file, []).append(index)
    if nsamp is None:  # no length declared: the first signal file's length decides
        first = groups[signals[0].file]
        sig0 = signals[first[0]]
        nsamp = max(0, _samples_in(sig0.fmt, max(0, len(by_name[sig0.file]) - sig0.offset))
                    // sum(signals[i].spf for i in first) - max(signals[i].skew for i in first))
    if nsamp * sum(s.spf for s in signals) > MAX_SAMPLES:
        raise _bad(header, f"declares more than {MAX_SAMPLES} samples, past the limit; "
                   "split the record")
    samples: list[np.ndarray] = [np.empty(0, np.int32)] * nsig
    for file, indices in groups.items():
        for index, values in zip(indices, _read_dat(file, by_name[file],
                                                    [signals[i] for i in indices], nsamp),
                                 strict=True):
            _check_sum(values, signals[index], file)
            samples[index] = values
    channels = tuple(
        Channel(name=s.name, units=s.units, gain=s.gain, baseline=float(s.baseline),
                adc_resolution=s.adc_res, samples_per_frame=s.spf, sampling_rate=fs * s.spf,
                samples=values, initial_value=s.init)
        for s, values in zip(signals, samples, strict=True))
    referenced = {header, *groups}
    events: list[Event] = []
    for name, data in sorted(by_name.items()):
        if name not in referenced and name.startswith(record + "."):
            events.extend(read_annotations(data, fs, name))
    events.sort(key=lambda event: event.sample)
    return Recording(name=record, sampling_rate=fs, frames=nsamp, channels=channels,
                     start=start, events=tuple(events))


# --------------------------------------------------------------------------- annotations


def read_annotations(data: bytes, sampling_rate: float, file: str = "annotations"
                     ) -> list[Event]:
    """The events of an MIT-format annotation file, in file order.

    ``sample`` counts frames at ``sampling_rate`` (the record's frequency).
    ``NUM`` and ``CHN`` carry over to the following annotations, ``SUB`` and
    ``AUX`` do not (as in the WFDB library). The file ends at a zero word or at
    its last byte.
    """
    if len(data) > _MAX_ANNOTATION_BYTES:
        raise _bad(file, "is larger than the annotation file limit")
    words = np.frombuffer(data[:len(data) // 2 * 2], "<u2").tolist()
    events: list[_Annotation] = []
    time, num, chan, i = 0, 0, 0, 0
    while i < len(words):
        word = words[i]
        code, value = word >> 10, word & 0x3FF
        i += 1
        if word == 0:
            break
        if code == _SKIP:
            if i + 2 > len(words):
                raise _bad(file, "is truncated inside a SKIP field; upload the complete file")
            skip = (words[i] << 16) | words[i + 1]
            time += skip - (1 << 32) if skip & (1 << 31) else skip
            i += 2
        elif code in (_NUM, _SUB, _CHN, _AUX):
            if not events:
                raise _bad(file, "does not start with an annotation; "
                           "it is not an MIT annotation file")
            last = events[-1]
            if code == _AUX:
                end = i + (value + 1) // 2
                if end > len(words):
                    raise _bad(file, "is truncated inside an AUX field; "
                               "upload the complete file")
                last.text = data[2 * i:2 * i + value].decode("latin-1").rstrip("\x00")
                i = end
                continue
            byte = value & 0xFF
            signed = byte - 256 if byte & 0x80 else byte  # NUM and SUB are signed chars
            if code == _NUM:
                last.number = num = signed
            elif code == _SUB:
                last.subtype = signed
            else:
                last.channel = chan = byte
        else:
            time += value
            if time < 0:
                raise _bad(file, "places an annotation before the record's start")
            events.append(_Annotation(time, LABELS.get(code, f"[{code}]"), num, chan))
    return [Event(time=e.sample / sampling_rate, sample=e.sample, label=e.label,
                  channel=e.channel, text=e.text, subtype=e.subtype, number=e.number)
            for e in events]


@dataclass
class _Annotation:
    """An annotation while its modifier fields are read."""

    sample: int
    label: str
    number: int
    channel: int
    subtype: int = 0
    text: str | None = None


def write_annotations(events: Sequence[Event]) -> bytes:
    """An MIT annotation file of ``events`` (sorted by sample here).

    A label that is not a WFDB symbol becomes a comment annotation (``"``)
    whose aux text is the label (and ``: text`` when the event has text);
    negative samples are written at 0. Aux text is cut at 255 bytes (Latin-1).
    """
    out: list[int] = []
    previous, num, chan = 0, 0, 0
    for event in sorted(events, key=lambda e: e.sample):
        sample = max(0, event.sample)
        code = _CODES.get(event.label)
        text = event.text
        if code is None:
            code = _NOTE
            text = event.label if text is None else f"{event.label}: {text}"
        step = sample - previous
        if step > 0x3FF:
            out += [_SKIP << 10, (step >> 16) & 0xFFFF, step & 0xFFFF]
            step = 0
        out.append((code << 10) | step)
        previous = sample
        if event.subtype:
            out.append((_SUB << 10) | (event.subtype & 0xFF))
        if (event.channel or 0) != chan:
            chan = event.channel or 0
            out.append((_CHN << 10) | (chan & 0xFF))
        if event.number != num:
            num = event.number
            out.append((_NUM << 10) | (num & 0xFF))
        if text:
            raw = text.encode("latin-1", "replace")[:255]
            out.append((_AUX << 10) | len(raw))
            padded = raw + b"\x00" * (len(raw) % 2)
            out += np.frombuffer(padded, "<u2").tolist()
    out.append(0)
    return np.asarray(out, "<u2").tobytes()


# --------------------------------------------------------------------------- write

_WRITE_FORMATS = ((212, -(2**11), 2**11 - 1), (16, -(2**15), 2**15 - 1),
                  (24, -(2**23), 2**23 - 1), (32, -(2**31), 2**31 - 1))


def _encode(fmt: int, flat: np.ndarray) -> bytes:
    values = flat.astype(np.int64)
    if fmt == 16:
        return values.astype("<i2").tobytes()
    if fmt == 32:
        return values.astype("<i4").tobytes()
    if fmt == 24:
        u = values & 0xFFFFFF
        return np.stack([u & 0xFF, (u >> 8) & 0xFF, u >> 16], 1).astype(np.uint8).tobytes()
    # 212: pairs of 12-bit samples in three bytes; an odd last sample is paired with 0.
    if values.size % 2:
        values = np.append(values, 0)
    a, b = values[0::2] & 0xFFF, values[1::2] & 0xFFF
    return np.stack([a & 0xFF, (a >> 8) | ((b >> 8) << 4), b & 0xFF], 1).astype(
        np.uint8).tobytes()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_wfdb(recording: Recording) -> dict[str, bytes]:
    """The record as WFDB files: ``{"<name>.hea", "<name>.dat"[, "<name>.atr"]}``.

    The record name keeps letters, digits and ``_`` (others become ``_``).
    Channels keep their samples per frame; the signal file is in the smallest
    of formats 212, 16, 24, 32 holding every sample, with checksums and initial
    values. WFDB baselines are integers: a fractional baseline (from EDF) is
    rounded, so physical values move by at most half an ADC step.
    """
    name = _RECORD_NAME.sub("_", recording.name) or "record"
    channels = recording.channels
    low = min((int(c.samples.min()) for c in channels if c.samples.size), default=0)
    high = max((int(c.samples.max()) for c in channels if c.samples.size), default=0)
    fmt = next(f for f, lo, hi in _WRITE_FORMATS if lo <= low and high <= hi)
    frames = recording.frames
    frame = np.concatenate([c.samples.reshape(frames, c.samples_per_frame) for c in channels],
                           axis=1) if frames else np.empty(0, np.int64)
    dat = _encode(fmt, frame.reshape(-1))
    header = [f"{name} {len(channels)} {_number(recording.sampling_rate)} {frames}"
              + _format_start(recording.start)]
    for channel in channels:
        spec = f"{fmt}x{channel.samples_per_frame}" if channel.samples_per_frame > 1 else str(fmt)
        units = re.sub(r"\s", "_", channel.units) or "NU"
        baseline = int(round(channel.baseline))
        init = int(channel.samples[0]) if channel.samples.size else 0
        checksum = int(channel.samples.sum(dtype=np.int64)) & 0xFFFF
        checksum -= 65536 if checksum >= 32768 else 0
        description = " ".join(channel.name.split()) or "signal"
        header.append(f"{name}.dat {spec} {_number(channel.gain)}({baseline})/{units} "
                      f"{channel.adc_resolution or _default_resolution(fmt)} 0 {init} "
                      f"{checksum} 0 {description}")
    out = {f"{name}.hea": ("\n".join(header) + "\n").encode("utf-8"), f"{name}.dat": dat}
    if recording.events:
        out[f"{name}.atr"] = write_annotations(recording.events)
    return out


def _default_resolution(fmt: int) -> int:
    return {212: 12, 16: 16, 24: 24, 32: 32}[fmt]


def _format_start(start: dt.datetime | None) -> str:
    if start is None:
        return ""
    clock = start.strftime("%H:%M:%S")
    if start.microsecond:
        clock += f".{start.microsecond // 1000:03d}"
    return f" {clock} {start.day:02d}/{start.month:02d}/{start.year:04d}"
