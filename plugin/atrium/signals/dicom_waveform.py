"""DICOM waveform instances (ECG, hemodynamic, EEG …) read into recordings.

:func:`read_dicom_waveform` takes a parsed :class:`pydicom.Dataset` and gives a
:class:`DicomWaveform`: one or more :class:`WaveformPart` values, each a
:class:`~atrium.signals.model.Recording` with the DICOM details of its channels
beside it (the model's :class:`~atrium.signals.model.Channel` has no free-form
field, so the details travel in :class:`DicomChannel`, parallel to
``recording.channels``, ready for the store's ``metadata``).

**Multiplex groups.** Groups that cover the same time span — the same
*Multiplex Group Time Offset* and the same duration (samples / rate, compared
exactly as fractions of the decimal strings) — become one recording, each
channel at its group's own rate: the recording's frame rate is the greatest
common divisor of those rates and a channel's ``samples_per_frame`` its rate
over that divisor. A group whose span differs (a 12-lead ECG's 1.2 s
``MEDIAN BEAT`` beside its 10 s ``RHYTHM``) becomes a part of its own, never
padded or cut, so every sample of every group is kept as stored. Parts follow
the order of their first group; :attr:`DicomWaveform.recording` is the first.

**Calibration.** PS3.3 C.10.9.1.4: a stored value ``v`` means
``v × sensitivity × correction + baseline``, the baseline being in the
sensitivity units. The model's line ``(digital − baseline) / gain`` is the same
with ``gain = 1 / (sensitivity × correction)`` and ``baseline = −baseline_dicom
× gain``, kept as a float (the model allows fractional baselines, as EDF has):
nothing is rounded to whole ADC units, physical values agree with pydicom's
``multiplex_array(as_raw=False)`` to float64 rounding. A channel without
*Channel Sensitivity* is in arbitrary units: gain 1, as pydicom reads it.

**Not shifted.** *Channel Sample Skew* (ms, usually a fraction of a sample from
multiplexed ADCs) is kept in :class:`DicomChannel` and not applied: moving
samples by part of a period would invent values.

**Byte order.** *Waveform Data* is little endian, as every transfer syntax in
use writes it; a dataset read from an Explicit VR Big Endian file (retired) is
read big endian, as that syntax swaps OW words.

**Refused.** Every failure is an :mod:`atrium.errors` value: no *Waveform
Sequence*, a header that does not parse, data shorter or longer than declared,
a sampling frequency of 0, a channel sensitivity of 0, sizes past
:data:`MAX_CHANNELS` or :data:`MAX_SAMPLES` → 400, checked before anything is
allocated; mu-law (``MB``) and A-law (``AB``) samples, used by the audio
classes only, and ``UL``/``SV``/``UV`` → 415.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import reduce
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM

from atrium.errors import BadRequest, UnsupportedMediaType
from atrium.signals.model import Channel, Event, Recording

__all__ = ["MAX_CHANNELS", "MAX_GROUPS", "MAX_SAMPLES", "RECORDING_TYPES", "DicomChannel",
           "DicomWaveform", "WaveformPart", "is_extracted_waveform", "read_dicom_waveform"]

MAX_CHANNELS = 4096
"""The most channels a multiplex group may declare."""
MAX_GROUPS = 256
"""The most multiplex groups an instance may hold."""
MAX_SAMPLES = 2**31
"""The most samples an instance may declare, all groups and channels together."""

_PREFIX = "1.2.840.10008.5.1.4.1.1.9."
# The waveform SOP classes that become recordings, with their recording_type.
# The audio classes (.9.4.1 Basic Voice, .9.4.2 General Audio) are not signals
# a researcher reads as channels, so they are left to Orthanc alone.
RECORDING_TYPES: dict[str, str] = {
    _PREFIX + "1.1": "ECG",           # 12-lead ECG
    _PREFIX + "1.2": "ECG",           # General ECG
    _PREFIX + "1.3": "ECG",           # Ambulatory ECG
    _PREFIX + "1.4": "ECG",           # General 32-bit ECG
    _PREFIX + "2.1": "HEMODYNAMIC",
    _PREFIX + "3.1": "EP",            # Cardiac Electrophysiology
    _PREFIX + "5.1": "PULSE",         # Arterial Pulse
    _PREFIX + "6.1": "RESPIRATORY",
    _PREFIX + "6.2": "RESPIRATORY",   # Multi-channel Respiratory
    _PREFIX + "7.1": "EEG",           # Routine Scalp EEG
    _PREFIX + "7.2": "EMG",
    _PREFIX + "7.3": "EOG",
    _PREFIX + "7.4": "EEG",           # Sleep EEG
    _PREFIX + "8.1": "BODY_POSITION",
}

# (interpretation, bits allocated) → numpy type code, without byte order.
_TYPES = {("SB", 8): "i1", ("UB", 8): "u1", ("SS", 16): "i2", ("US", 16): "u2",
          ("SL", 32): "i4"}
_REFUSED = {"MB": "mu-law", "AB": "A-law", "UL": "unsigned 32-bit", "SV": "64-bit",
            "UV": "64-bit"}
# What pydicom may raise for a damaged element when a value is first read (it
# parses lazily): an unknown VR is a NotImplementedError, a sequence item cut
# short an OSError.
_PARSE_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError,
                 ArithmeticError, NotImplementedError, OSError)


def is_extracted_waveform(sop_class_uid: str) -> bool:
    """Whether instances of this SOP class become recordings (:data:`RECORDING_TYPES`)."""
    return str(sop_class_uid).strip() in RECORDING_TYPES


@dataclass(frozen=True)
class DicomChannel:
    """What DICOM says of one channel, beyond the model's :class:`Channel`.

    ``group`` and ``channel`` are 0-based indices into *Waveform Sequence* and
    the group's *Channel Definition Sequence*. ``sensitivity`` is in
    ``units_code`` per stored value (``None`` when absent: arbitrary units),
    ``baseline`` in the same units, ``sample_skew`` in milliseconds, the filter
    frequencies in hertz (``None`` when absent).
    """

    group: int
    channel: int
    group_label: str
    label: str
    source: str
    source_code: str
    sensitivity: float | None
    correction: float
    baseline: float
    units_code: str
    units_meaning: str
    bits_stored: int
    sample_skew: float | None
    filter_low: float | None
    filter_high: float | None
    notch: float | None

    def metadata(self) -> dict[str, Any]:
        """The details as JSON-ready values, for the store's per-channel metadata."""
        return {"multiplex_group": self.group, "channel_index": self.channel,
                "multiplex_group_label": self.group_label, "label": self.label,
                "source": self.source, "source_code": self.source_code,
                "sensitivity": self.sensitivity, "sensitivity_correction": self.correction,
                "baseline": self.baseline, "sensitivity_units": self.units_code,
                "sample_skew_ms": self.sample_skew, "filter_low_hz": self.filter_low,
                "filter_high_hz": self.filter_high, "notch_hz": self.notch}


@dataclass(frozen=True, eq=False)
class WaveformPart:
    """Multiplex groups sharing one time span, as a recording.

    ``channels`` is parallel to ``recording.channels``; ``groups`` are the
    0-based group indices; ``time_offset`` is the groups' *Multiplex Group Time
    Offset* in seconds (already added to ``recording.start``).
    """

    recording: Recording
    channels: tuple[DicomChannel, ...]
    groups: tuple[int, ...]
    time_offset: float


@dataclass(frozen=True, eq=False)
class DicomWaveform:
    """A waveform instance: its identifiers, its parts, its untimed statements.

    ``statements`` are the annotations not tied to a sample (an ECG's
    interpretation text, ``"RR Interval: 982 ms"``); timed annotations are the
    events of the part whose group they reference.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    recording_type: str
    parts: tuple[WaveformPart, ...]
    statements: tuple[str, ...]

    @property
    def recording(self) -> Recording:
        """The first part's recording (the one holding multiplex group 0)."""
        return self.parts[0].recording


@dataclass(frozen=True, eq=False)
class _Group:
    index: int
    label: str
    offset: Fraction   # milliseconds
    rate: Fraction     # hertz
    samples: int
    dtype: np.dtype[Any]
    data: memoryview  # of the element's value: no copy until each channel's own
    definitions: tuple[Dataset, ...]


def _bad(what: str) -> BadRequest:
    return BadRequest(f"the DICOM waveform {what}")


def _get(item: Dataset, keyword: str) -> Any:
    """An element's value, ``None`` when absent; a damaged one is a 400."""
    try:
        return item.get(keyword)
    except _PARSE_ERRORS:
        raise _bad(f"has a {keyword} that cannot be read; the instance is damaged") from None


def _single(item: Dataset, keyword: str) -> Any:
    value = _get(item, keyword)
    if isinstance(value, MultiValue | list):
        raise _bad(f"has several values for {keyword} where one is expected")
    return None if value == "" else value


def _integer(item: Dataset, keyword: str, where: str) -> int:
    value = _single(item, keyword)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"lacks {keyword} in {where}, or it is not an integer")
    return value


def _fraction(item: Dataset, keyword: str, where: str, default: str | None) -> Fraction:
    """A decimal string exactly, so that rates and durations compare without rounding."""
    value = _single(item, keyword)
    if value is None:
        if default is None:
            raise _bad(f"lacks {keyword} in {where}")
        value = default
    try:
        text = str(value).strip()
        # float() first: Fraction("1e999999999") would build a gigantic integer.
        if not math.isfinite(float(text)):
            raise ValueError(text)
        return Fraction(text)
    except _PARSE_ERRORS:
        raise _bad(f"has a {keyword} in {where} that is not a finite number") from None


def _float(item: Dataset, keyword: str, where: str) -> float | None:
    value = _single(item, keyword)
    if value is None:
        return None
    try:
        number = float(value)
    except _PARSE_ERRORS:
        raise _bad(f"has a {keyword} in {where} that is not a number") from None
    if not math.isfinite(number):
        raise _bad(f"has a {keyword} in {where} that is not a finite number")
    return number


def _text(item: Dataset, keyword: str) -> str:
    value = _get(item, keyword)
    return "" if value is None or isinstance(value, MultiValue | list) else str(value).strip()


def _code(item: Dataset, keyword: str) -> Dataset | None:
    """The first item of a code sequence, or ``None``."""
    value = _get(item, keyword)
    try:
        return value[0] if value else None
    except _PARSE_ERRORS:
        return None


def _groups(dataset: Dataset) -> list[_Group]:
    """Every multiplex group, its header and data length checked, nothing decoded."""
    sequence = _get(dataset, "WaveformSequence")
    if not sequence:
        raise _bad("has no Waveform Sequence (5400,0100), so no samples; "
                   "it is not a waveform instance")
    if len(sequence) > MAX_GROUPS:
        raise _bad(f"has {len(sequence)} multiplex groups; at most {MAX_GROUPS} are accepted")
    encoding = getattr(dataset, "original_encoding", (None, True))
    order = ">" if encoding[1] is False else "<"  # a dataset built in memory is little endian
    groups, total = [], 0
    for index, item in enumerate(sequence):
        where = f"multiplex group {index}"
        count = _integer(item, "NumberOfWaveformChannels", where)
        samples = _integer(item, "NumberOfWaveformSamples", where)
        if not 1 <= count <= MAX_CHANNELS:
            raise _bad(f"declares {count} channels in {where}; between 1 and "
                       f"{MAX_CHANNELS} are accepted")
        if samples < 1:
            raise _bad(f"declares no samples in {where}")
        total += count * samples
        if total > MAX_SAMPLES:
            raise _bad(f"declares more than {MAX_SAMPLES} samples, past the limit")
        rate = _fraction(item, "SamplingFrequency", where, None)
        if rate <= 0 or float(rate) == 0:
            raise _bad(f"declares a sampling frequency of {float(rate):g} Hz in {where}; "
                       "it must be above 0")
        interpretation = _text(item, "WaveformSampleInterpretation")
        bits = _integer(item, "WaveformBitsAllocated", where)
        if interpretation in _REFUSED:
            raise UnsupportedMediaType(
                f"multiplex group {index} holds {_REFUSED[interpretation]} samples "
                f"({interpretation}), which Atrium does not extract; signed or unsigned "
                "8- and 16-bit and signed 32-bit samples are")
        if (interpretation, bits) not in _TYPES:
            if interpretation in {key[0] for key in _TYPES}:
                raise _bad(f"declares {bits} bits allocated for {interpretation} samples "
                           f"in {where}; the header is damaged")
            raise UnsupportedMediaType(f"multiplex group {index} has the sample "
                                       f"interpretation {interpretation!r}, which is unknown")
        data = _get(item, "WaveformData")
        if not isinstance(data, bytes):
            raise _bad(f"lacks Waveform Data in {where}")
        expected = count * samples * bits // 8
        # OB/OW values have an even length: one padding byte may follow odd data.
        if len(data) < expected:
            raise _bad(f"holds {len(data)} bytes of data in {where} where {count} channels "
                       f"x {samples} samples x {bits} bits need {expected}: it is truncated")
        if len(data) > expected + expected % 2:
            raise _bad(f"holds {len(data)} bytes of data in {where} where {count} channels "
                       f"x {samples} samples x {bits} bits need {expected}; the header "
                       "does not match the data")
        definitions = _get(item, "ChannelDefinitionSequence") or []
        if len(definitions) != count:
            raise _bad(f"defines {len(definitions)} channels in {where}, which declares "
                       f"{count}; the header is damaged")
        groups.append(_Group(index, _text(item, "MultiplexGroupLabel"),
                             _fraction(item, "MultiplexGroupTimeOffset", where, "0"), rate,
                             samples, np.dtype(order + _TYPES[interpretation, bits]),
                             memoryview(data)[:expected], tuple(definitions)))
    return groups


def _details(group: _Group, index: int) -> DicomChannel:
    item = group.definitions[index]
    where = f"channel {index} of multiplex group {group.index}"
    source = _code(item, "ChannelSourceSequence")
    units = _code(item, "ChannelSensitivityUnitsSequence")
    sensitivity = _float(item, "ChannelSensitivity", where)
    correction = _float(item, "ChannelSensitivityCorrectionFactor", where)
    bits_stored = _single(item, "WaveformBitsStored")
    return DicomChannel(
        group=group.index, channel=index, group_label=group.label,
        label=_text(item, "ChannelLabel"),
        source=_text(source, "CodeMeaning") if source else "",
        source_code=(f"{_text(source, 'CodingSchemeDesignator')}:{_text(source, 'CodeValue')}"
                     if source else ""),
        sensitivity=sensitivity, correction=1.0 if correction is None else correction,
        baseline=_float(item, "ChannelBaseline", where) or 0.0,
        units_code=_text(units, "CodeValue") if units else "",
        units_meaning=_text(units, "CodeMeaning") if units else "",
        bits_stored=bits_stored if isinstance(bits_stored, int) else 0,
        sample_skew=_float(item, "ChannelSampleSkew", where),
        filter_low=_float(item, "FilterLowFrequency", where),
        filter_high=_float(item, "FilterHighFrequency", where),
        notch=_float(item, "NotchFilterFrequency", where))


def _calibration(detail: DicomChannel) -> tuple[float, float]:
    """The model's ``(gain, baseline)`` for a channel (see the module docstring)."""
    scale = (1.0 if detail.sensitivity is None else detail.sensitivity) * detail.correction
    gain = 1.0 / scale if scale else math.inf
    if not (math.isfinite(gain) and gain != 0):
        raise _bad(f"gives channel {detail.channel} of multiplex group {detail.group} a "
                   "sensitivity of zero (or a correction factor of zero); the header is damaged")
    return gain, -detail.baseline * gain + 0.0  # + 0.0: a baseline of 0 is not -0.0


def _prefilter(detail: DicomChannel) -> str:
    """The filters in EDF's spelling (``HP:0.05Hz LP:300Hz N:50Hz``)."""
    parts = [f"{name}:{value:g}Hz" for name, value in
             (("HP", detail.filter_low), ("LP", detail.filter_high), ("N", detail.notch))
             if value is not None]
    return " ".join(parts)


def _rate_gcd(rates: Sequence[Fraction]) -> Fraction:
    denominator = reduce(math.lcm, (r.denominator for r in rates), 1)
    return Fraction(reduce(math.gcd, (int(r * denominator) for r in rates), 0), denominator)


def _start(dataset: Dataset, offset: Fraction) -> dt.datetime | None:
    """Acquisition DateTime, else Content Date + Time, plus the group offset (ms);
    naive local time (a zone offset in the DT is dropped, as the model wants)."""
    try:
        acquired = _get(dataset, "AcquisitionDateTime")
        if acquired:
            start: dt.datetime = DT(str(acquired))
        else:
            date, time = _get(dataset, "ContentDate"), _get(dataset, "ContentTime")
            if not date:
                return None
            start = dt.datetime.combine(DA(str(date)), TM(str(time)) if time else dt.time())
        return start.replace(tzinfo=None) + dt.timedelta(milliseconds=float(offset))
    except (*_PARSE_ERRORS, BadRequest):
        return None


def _name(labels: Sequence[str]) -> str:
    """A record name fit for WFDB: the group labels joined by ``+``, any character
    but a letter, digit, ``+`` or ``-`` made ``_`` (``MEDIAN BEAT`` → ``MEDIAN_BEAT``)."""
    text = "+".join(label for label in labels if label) or "waveform"
    return "".join(c if c.isalnum() or c in "+-" else "_" for c in text)


def _values(item: Dataset, keyword: str) -> list[Any]:
    value = _get(item, keyword)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue | list) else [value]


def _annotations(dataset: Dataset, groups: Sequence[_Group]
                 ) -> tuple[dict[int, list[tuple[int, Event]]], list[str]]:
    """Timed annotations by group index, each with its 0-based channel (-1: all
    channels), and the untimed ones as statements.

    Time is *Referenced Sample Positions* (counted from 1) or *Referenced Time
    Offsets* (ms); a ``SEGMENT`` gets a duration, a ``MULTIPOINT`` one event per
    point, other range types their first point. Only the first (group, channel)
    pair of *Referenced Waveform Channels* is used. An annotation that
    references no existing group or sample, or a *Referenced DateTime*, is left
    out: annotations are a courtesy, not the data.
    """
    timed: dict[int, list[tuple[int, Event]]] = {}
    statements: list[str] = []
    for item in _get(dataset, "WaveformAnnotationSequence") or []:
        try:
            concept, units = (_code(item, "ConceptNameCodeSequence"),
                              _code(item, "MeasurementUnitsCodeSequence"))
            name = _text(concept, "CodeMeaning") if concept else ""
            text, numeric = _text(item, "UnformattedTextValue"), _text(item, "NumericValue")
            value = (f"{numeric} {_text(units, 'CodeValue') if units else ''}".strip()
                     if numeric else text)
            label, detail = name or text, value if name and value else None
            channels = _values(item, "ReferencedWaveformChannels")
            positions = _values(item, "ReferencedSamplePositions")
            offsets = _values(item, "ReferencedTimeOffsets")
            if not (positions or offsets or _get(item, "ReferencedDateTime")):
                if label or value:
                    statements.append(f"{name}: {value}" if detail else label or value)
                continue
            group = next(g for g in groups if len(channels) > 1 and g.index == channels[0] - 1)
            rate = float(group.rate)
            samples = ([int(p) - 1 for p in positions] if positions
                       else [round(float(o) * rate / 1000) for o in offsets])
            kind = _text(item, "TemporalRangeType")
            duration = ((samples[-1] - samples[0]) / rate
                        if kind == "SEGMENT" and len(samples) > 1 else None)
            for sample in samples if kind == "MULTIPOINT" else samples[:1]:
                if label and 0 <= sample < group.samples:
                    event = Event(time=sample / rate, sample=sample, label=label,
                                  text=detail, duration=duration)
                    timed.setdefault(group.index, []).append((int(channels[1]) - 1, event))
        except (*_PARSE_ERRORS, StopIteration, BadRequest):
            continue
    return timed, statements


def _part(dataset: Dataset, members: Sequence[_Group],
          timed: dict[int, list[tuple[int, Event]]]) -> WaveformPart:
    base = _rate_gcd([g.rate for g in members])
    frames = members[0].samples * base / members[0].rate
    if frames.denominator != 1 or float(base) == 0:  # not for groups of one span
        raise _bad(f"has multiplex groups {[g.index for g in members]} whose rates "
                   "share no usable frame rate")
    channels: list[Channel] = []
    details: list[DicomChannel] = []
    first_channel: dict[int, int] = {}
    events: list[Event] = []
    for group in members:
        per_frame = group.rate / base
        first_channel[group.index] = len(channels)
        count = len(group.definitions)
        # One copy per channel: a strided view would keep the whole group alive.
        table = np.frombuffer(group.data, group.dtype).reshape(group.samples, count)
        for index in range(count):
            detail = _details(group, index)
            gain, baseline = _calibration(detail)
            details.append(detail)
            channels.append(Channel(
                name=detail.source or detail.label or f"channel {len(channels) + 1}",
                units=detail.units_code, gain=gain, baseline=baseline,
                adc_resolution=detail.bits_stored, samples_per_frame=int(per_frame),
                sampling_rate=float(group.rate), samples=table[:, index].astype(np.int32),
                prefilter=_prefilter(detail)))
        for channel, event in timed.get(group.index, []):
            # Event.sample counts frames of the recording, not the group's samples.
            events.append(Event(time=event.time, sample=int(event.sample // per_frame),
                                label=event.label, text=event.text, duration=event.duration,
                                channel=first_channel[group.index] + channel
                                if 0 <= channel < count else None))
    events.sort(key=lambda e: e.time)
    offset = members[0].offset
    try:
        recording = Recording(name=_name([g.label for g in members]),
                              sampling_rate=float(base), frames=int(frames),
                              channels=tuple(channels), start=_start(dataset, offset),
                              events=tuple(events))
    except ValueError as error:
        raise _bad(f"does not make a consistent recording: {error}") from None
    return WaveformPart(recording, tuple(details), tuple(g.index for g in members),
                        float(offset) / 1000)


def read_dicom_waveform(dataset: Dataset) -> DicomWaveform:
    """Read every multiplex group of a waveform instance (see the module docstring).

    Raises
    ------
    BadRequest
        No Waveform Sequence, a damaged header, data that does not match the
        declared sizes, a sampling frequency or sensitivity of 0, a limit passed.
    UnsupportedMediaType
        Mu-law, A-law, unsigned 32-bit or 64-bit samples.
    """
    groups = _groups(dataset)
    spans: dict[tuple[Fraction, Fraction], list[_Group]] = {}
    for group in groups:
        spans.setdefault((group.offset, group.samples / group.rate), []).append(group)
    timed, statements = _annotations(dataset, groups)
    sop_class = _text(dataset, "SOPClassUID")
    return DicomWaveform(
        sop_class_uid=sop_class, sop_instance_uid=_text(dataset, "SOPInstanceUID"),
        study_instance_uid=_text(dataset, "StudyInstanceUID"),
        series_instance_uid=_text(dataset, "SeriesInstanceUID"),
        recording_type=RECORDING_TYPES.get(sop_class, "WAVEFORM"),
        parts=tuple(_part(dataset, members, timed) for members in spans.values()),
        statements=tuple(statements))
