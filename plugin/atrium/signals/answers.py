"""The answers of ``GET /api/recordings/{id}/signal`` and the caps on what one
answer may carry.

A window of digital samples (as :func:`atrium.signals.store.read_window` gives
it) becomes a :class:`SignalAnswer`, which is encoded as JSON
(:meth:`SignalAnswer.to_json`), as the little-endian layout of ``docs/SIGNALS.md``
("Binary answers", :func:`encode_binary`) or as an Arrow IPC stream
(:func:`encode_arrow`, "Arrow answers"). All three carry the same numbers.

Pure: numpy in, bytes or plain data out, nothing of HTTP or the database.
pyarrow is imported by :func:`encode_arrow` only (it is heavy to import).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from atrium.errors import BadRequest, FieldError
from atrium.signals.store import first_sample_at, min_max_decimate

__all__ = [
    "ARROW_STREAM",
    "BINARY",
    "BINARY_MAGIC",
    "MAX_ANSWER_SAMPLES",
    "MAX_EXPORT_SAMPLES",
    "MAX_JSON_ANSWER_SAMPLES",
    "MAX_WINDOW_SAMPLES",
    "ChannelAnswer",
    "SignalAnswer",
    "arrow_column_names",
    "channel_answer",
    "check_export_size",
    "check_window_size",
    "encode_arrow",
    "encode_binary",
]

BINARY: Final = "application/octet-stream"
ARROW_STREAM: Final = "application/vnd.apache.arrow.stream"
BINARY_MAGIC: Final = b"ATRS"
"""The first bytes of a binary answer (``docs/SIGNALS.md``, "Binary answers")."""

MAX_JSON_ANSWER_SAMPLES: Final = 2_000_000
"""Samples (all channels together) one JSON answer may carry: as text and Python
objects in memory that is already some 100 MB. Binary and Arrow carry more."""
MAX_ANSWER_SAMPLES: Final = 10_000_000
"""Samples (all channels together) one binary or Arrow answer may carry (at most
80 MB of float64)."""
MAX_WINDOW_SAMPLES: Final = 50_000_000
"""Samples (all channels together) one request may decode, ``max_points`` or not
(200 MB of int32): a whole day of one channel at 500 Hz is 43.2 million."""
MAX_EXPORT_SAMPLES: Final = 150_000_000
"""Samples (all channels together) ``export`` writes: it decodes the whole
recording and builds the file in memory (about 10 bytes a sample at the peak)."""

_ARROW_CHUNK_ROWS: Final = 1 << 20


@dataclass(frozen=True)
class ChannelAnswer:
    """One channel of a window.

    ``samples`` are int32 (digital) or float64 (physical, ``(digital − baseline) /
    gain``). ``first_sample`` is the channel's sample number of the window's first
    sample. ``positions`` (with ``max_points`` only) are the kept samples' offsets
    from ``first_sample``, strictly increasing.
    """

    index: int
    name: str
    units: str
    sampling_rate: float
    first_sample: int
    samples: NDArray[Any]
    positions: NDArray[np.int64] | None = None


@dataclass(frozen=True)
class SignalAnswer:
    """A window of samples: ``sampling_rate`` is the frame rate, ``start`` and
    ``end`` seconds (``end`` cut to the recording's duration)."""

    sampling_rate: float
    start: float
    end: float
    digital: bool
    channels: tuple[ChannelAnswer, ...]

    @property
    def decimated(self) -> bool:
        return any(c.positions is not None for c in self.channels)

    def to_json(self) -> dict[str, Any]:
        """The JSON answer (``docs/SIGNALS.md``): floats stay exact through JSON."""
        channels = []
        for c in self.channels:
            entry: dict[str, Any] = {
                "index": c.index, "name": c.name, "units": c.units,
                "sampling_rate": c.sampling_rate, "first_sample": c.first_sample}
            if c.positions is not None:
                entry["positions"] = c.positions.tolist()
            entry["samples"] = c.samples.tolist()
            channels.append(entry)
        return {"sampling_rate": self.sampling_rate, "start": self.start, "end": self.end,
                "channels": channels}


def window_samples(start: float, end: float | None, rate: float, count: int) -> int:
    """How many of a channel's ``count`` samples ``i`` have ``start <= i / rate < end``."""
    lo = first_sample_at(start, rate, count)
    hi = count if end is None else first_sample_at(end, rate, count)
    return max(0, hi - lo)


def check_window_size(window: int, answer: int, wanted_format: str) -> None:
    """Refuse (400) a request that would decode ``window`` samples or answer
    ``answer`` samples (all channels together) beyond the caps.

    Raises
    ------
    BadRequest
        Over :data:`MAX_WINDOW_SAMPLES` decoded, or over :data:`MAX_JSON_ANSWER_SAMPLES`
        (``json``) / :data:`MAX_ANSWER_SAMPLES` (``binary``, ``arrow``) answered; the
        problem names ``max_points``, ``end`` and ``channels``.
    """
    if window > MAX_WINDOW_SAMPLES:
        raise BadRequest.invalid([FieldError(
            "query", "end", f"the window holds {window} samples over the chosen channels, "
            f"more than the {MAX_WINDOW_SAMPLES} one request may read; ask for a shorter "
            "window (start, end) or fewer channels, max_points or not")])
    cap = MAX_JSON_ANSWER_SAMPLES if wanted_format == "json" else MAX_ANSWER_SAMPLES
    if answer > cap:
        hint = f", or format=binary|arrow (up to {MAX_ANSWER_SAMPLES})" \
            if wanted_format == "json" else ""
        raise BadRequest.invalid([FieldError(
            "query", "max_points", f"the answer would carry {answer} samples, more than "
            f"the {cap} one {wanted_format} answer may; give max_points (per channel, for "
            f"display), a shorter window (start, end) or fewer channels{hint}")])


def check_export_size(samples: int) -> None:
    """Refuse (400) an export of more than :data:`MAX_EXPORT_SAMPLES` samples."""
    if samples > MAX_EXPORT_SAMPLES:
        raise BadRequest(f"the recording holds {samples} samples, more than the "
                         f"{MAX_EXPORT_SAMPLES} one export may write; read it in windows "
                         "with GET /api/recordings/{id}/signal?format=arrow instead")


def channel_answer(index: int, channel: Mapping[str, Any], window: NDArray[np.int32], *,
                   start: float, frames: int, digital: bool, max_points: int | None
                   ) -> ChannelAnswer:
    """A channel's answer from its window of digital samples.

    ``channel`` is its entry of ``recordings.metadata.channels`` (``name``, ``units``,
    ``gain``, ``baseline``, ``sampling_rate``, ``samples_per_frame``); ``frames`` the
    recording's frame count. With ``max_points`` the samples are reduced by
    :func:`atrium.signals.store.min_max_decimate` (each bucket's minimum and maximum).
    """
    rate = float(channel["sampling_rate"])
    count = frames * int(channel.get("samples_per_frame", 1))
    positions: NDArray[np.int64] | None = None
    values = np.asarray(window, dtype=np.int32)
    if max_points is not None:
        positions, values = min_max_decimate(values, max_points)
    if digital:
        samples: NDArray[Any] = values.astype(np.int32, copy=False)
    else:
        samples = (values.astype(np.float64) - float(channel["baseline"])) \
            / float(channel["gain"])
    return ChannelAnswer(index=index, name=str(channel["name"]),
                         units="" if digital else str(channel["units"]), sampling_rate=rate,
                         first_sample=first_sample_at(start, rate, count), samples=samples,
                         positions=positions)


# --- binary -----------------------------------------------------------------------


def encode_binary(answer: SignalAnswer) -> bytes:
    """The little-endian layout of ``docs/SIGNALS.md``, "Binary answers"."""
    out = [BINARY_MAGIC, struct.pack("<BBHddd", 1, 0 if answer.digital else 1,
                                     len(answer.channels), answer.sampling_rate,
                                     answer.start, answer.end)]
    for channel in answer.channels:
        positions = channel.positions
        out.append(struct.pack("<HdqIB", channel.index, channel.sampling_rate,
                               channel.first_sample, channel.samples.size,
                               positions is not None))
        if positions is not None:
            out.append(np.asarray(positions, dtype="<i8").tobytes())
        out.append(np.asarray(channel.samples,
                              dtype="<i4" if answer.digital else "<f8").tobytes())
    return b"".join(out)


# --- Arrow ------------------------------------------------------------------------


def _unique(name: str, index: int, used: set[str]) -> str:
    while not name or name in used:
        name = f"{name}#{index}"
    used.add(name)
    return name


def arrow_column_names(answer: SignalAnswer) -> list[str]:
    """Column names of the Arrow answer: one per channel, then (with ``max_points``)
    one of positions per channel.

    A channel's column is named after the channel; a name already taken by an
    earlier column (or an empty one) gets ``#<index>`` appended until it is unique —
    two channels ``V1`` of indices 3 and 7 give ``V1`` and ``V1#7``. A positions
    column is ``<channel column>#positions``, made unique the same way.
    """
    used: set[str] = set()
    names = [_unique(c.name, c.index, used) for c in answer.channels]
    if answer.decimated:
        names += [_unique(f"{name}#positions", c.index, used)
                  for name, c in zip(names, answer.channels, strict=True)]
    return names


def _column(pa: Any, values: NDArray[Any], rows: int, kind: Any) -> Any:
    """``values`` as an Arrow array of ``rows`` values, nulls after the real ones."""
    if values.size == rows:
        return pa.array(values, type=kind)
    padded = np.zeros(rows, dtype=values.dtype)
    padded[:values.size] = values
    mask = np.arange(rows) >= values.size
    return pa.array(padded, type=kind, mask=mask)


def encode_arrow(answer: SignalAnswer) -> bytes:
    """An Arrow IPC stream (``application/vnd.apache.arrow.stream``) of ``answer``.

    One column per channel (names: :func:`arrow_column_names`), int32 for digital
    samples, float64 for physical ones. Channels of different lengths (different own
    rates, or different counts after ``max_points``) share one table: a shorter
    column is padded with nulls at its end, and its field metadata ``length`` says
    how many values are real. Field metadata also holds ``index``, ``units``,
    ``sampling_rate`` (the channel's own) and ``first_sample``; the schema's holds
    ``sampling_rate`` (the frame rate), ``start``, ``end``, ``units``
    (``digital`` or ``physical``) and ``decimated``. Numbers in metadata are text
    that parses back to the same float (``repr``).

    With ``max_points``, a positions column (int64, field metadata ``positions_of``:
    the channel's column name) follows all channel columns, one per channel.
    """
    import pyarrow as pa  # heavy: only when an Arrow answer is asked for

    names = arrow_column_names(answer)
    kind = pa.int32() if answer.digital else pa.float64()
    rows = max((c.samples.size for c in answer.channels), default=0)
    fields, columns = [], []
    for name, c in zip(names[:len(answer.channels)], answer.channels, strict=True):
        fields.append(pa.field(name, kind, nullable=True, metadata={
            "index": str(c.index), "units": c.units, "sampling_rate": repr(c.sampling_rate),
            "first_sample": str(c.first_sample), "length": str(c.samples.size)}))
        columns.append(_column(pa, c.samples, rows, kind))
    if answer.decimated:
        count = len(answer.channels)
        for name, positions_name, c in zip(names[:count], names[count:], answer.channels,
                                           strict=True):
            positions = np.asarray(c.positions, dtype=np.int64)
            fields.append(pa.field(positions_name, pa.int64(), nullable=True, metadata={
                "index": str(c.index), "positions_of": name,
                "length": str(positions.size)}))
            columns.append(_column(pa, positions, rows, pa.int64()))
    schema = pa.schema(fields, metadata={
        "sampling_rate": repr(answer.sampling_rate), "start": repr(answer.start),
        "end": repr(answer.end), "units": "digital" if answer.digital else "physical",
        "decimated": "true" if answer.decimated else "false"})
    table = pa.Table.from_arrays(columns, schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table, max_chunksize=_ARROW_CHUNK_ROWS)
    return bytes(sink.getvalue().to_pybytes())
