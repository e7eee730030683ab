"""The in-memory form of a signal recording, whatever file it came from.

Every reader (:mod:`atrium.signals.wfdb`, :mod:`atrium.signals.edf`) gives a
:class:`Recording`; every writer takes one. Samples are the file's *digital*
integers, never rescaled or averaged, so a round trip through Atrium is exact.

Physical values follow the WFDB convention::

    physical = (digital - baseline) / gain

with ``gain`` in ADC units per physical unit. EDF describes the same line by two
points, (digital_min, physical_min) and (digital_max, physical_max); the EDF
reader maps them to ``gain = (digital_max - digital_min) / (physical_max -
physical_min)`` and ``baseline = digital_min - physical_min * gain`` in float64,
which reproduces EDF's physical values to within float64 rounding (a few ulp;
the EDF header itself only carries 8 characters per number). The EDF numbers are
kept on the channel (:attr:`Channel.edf_range`) so an EDF written back carries
the very same header text.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Channel", "EdfRange", "Event", "Recording"]


@dataclass(frozen=True)
class EdfRange:
    """An EDF signal's calibration as written in its header (numbers as parsed)."""

    physical_min: float
    physical_max: float
    digital_min: int
    digital_max: int


@dataclass(frozen=True, eq=False)
class Channel:
    """One signal of a recording.

    ``samples`` are the digital integers (``int16`` from 16-bit EDF, ``int32`` from
    the other readers; writers accept any integer dtype) at the channel's *own* rate,
    ``sampling_rate`` = the recording's frame rate × ``samples_per_frame``.
    ``gain`` is ADC units per physical unit (never 0); ``baseline`` is the
    digital value of physical zero (an integer for WFDB, possibly fractional
    for EDF). ``adc_resolution`` is in bits (0 when the file does not say).
    ``initial_value`` is the first sample as the header declares it (WFDB), or
    ``None``.
    """

    name: str
    units: str
    gain: float
    baseline: float
    adc_resolution: int
    samples_per_frame: int
    sampling_rate: float
    samples: np.ndarray
    initial_value: int | None = None
    transducer: str = ""
    prefilter: str = ""
    edf_range: EdfRange | None = None

    def physical(self) -> np.ndarray:
        """The samples in physical units (float64): ``(digital - baseline) / gain``."""
        return (self.samples.astype(np.float64) - self.baseline) / self.gain


@dataclass(frozen=True)
class Event:
    """A timed annotation.

    ``time`` is in seconds from the recording's start; ``sample`` is the index of
    the frame at the recording's ``sampling_rate`` (for WFDB the annotation's own
    sample number). ``label`` is a WFDB beat/annotation symbol (``N``, ``V``,
    ``+`` …) for WFDB annotations, or the annotation text for EDF+. ``text`` is
    the WFDB aux string (``(AFIB``) or ``None``; ``channel`` the WFDB ``chan``
    field or ``None``; ``duration`` seconds (EDF+) or ``None``. ``subtype`` and
    ``number`` are WFDB's ``sub`` and ``num`` fields (0 when absent).
    """

    time: float
    sample: int
    label: str
    channel: int | None = None
    text: str | None = None
    duration: float | None = None
    subtype: int = 0
    number: int = 0


@dataclass(frozen=True, eq=False)
class Recording:
    """A recording: its frame rate, its start if known, its channels and events.

    ``sampling_rate`` is frames per second (WFDB's base frequency; for EDF the
    rate of the slowest common frame, see :mod:`atrium.signals.edf`); ``frames``
    is the number of frames, so channel ``c`` has ``frames *
    c.samples_per_frame`` samples. ``start`` is naive (files carry no zone) or
    ``None``. Construction checks that the channels agree with ``frames`` and
    that rates and gains are usable, raising :class:`ValueError` otherwise (a
    caller building one from a request turns that into a 400).
    """

    name: str
    sampling_rate: float
    frames: int
    channels: tuple[Channel, ...]
    start: dt.datetime | None = None
    events: tuple[Event, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("a recording needs at least one channel")
        if not (math.isfinite(self.sampling_rate) and self.sampling_rate > 0):
            raise ValueError("sampling_rate must be a positive number of frames per second")
        if self.frames < 0:
            raise ValueError("frames must not be negative")
        for index, channel in enumerate(self.channels):
            if channel.samples_per_frame < 1:
                raise ValueError(f"channel {index} needs samples_per_frame of at least 1")
            if channel.samples.ndim != 1 or channel.samples.dtype.kind not in "iu":
                raise ValueError(f"channel {index} needs a one-dimensional array of integers")
            if channel.samples.size != self.frames * channel.samples_per_frame:
                raise ValueError(f"channel {index} has {channel.samples.size} samples; "
                                 f"frames x samples_per_frame = "
                                 f"{self.frames * channel.samples_per_frame}")
            if not (math.isfinite(channel.gain) and channel.gain != 0):
                raise ValueError(f"channel {index} needs a finite, non-zero gain")

    @property
    def duration(self) -> float:
        """Seconds covered by the samples (``frames / sampling_rate``)."""
        return self.frames / self.sampling_rate
