"""Atrium's lossless codec for signal segments (ECG, EEG, any integer samples).

A segment holds one window of one or more channels of digital samples: integers
within the signed 32-bit range, which covers WFDB formats 8, 16, 24, 32, 80,
212, 310 and 311 and EDF/BDF. Each channel is predicted from its own past by a
linear predictor fitted to this window (least squares, its order chosen per
channel by the bytes it actually costs) and, in a block of several channels,
from the channels coded before it at the same instants (on a 12-lead ECG III,
aVR, aVL and aVF are linear combinations of I and II, so they cost almost
nothing). The integer residuals go through an adaptive binary range coder whose
contexts follow the local residual magnitude. The byte layout is documented in
``docs/SIGNALS.md`` ("Codec"); a segment carries everything needed to decode it.

The per-sample loops are compiled with numba: they are sequential by nature,
since a sample's prediction needs the decoded samples before it. They are
compiled (or loaded from numba's cache) once per process by
:func:`compile_loops`, always on a thread of its own with a large stack, and
never again: see there why.
"""

from __future__ import annotations

import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Final

import numba
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MAGIC",
    "VERSION",
    "ChannelPredictor",
    "SegmentInfo",
    "compile_loops",
    "decode",
    "encode_block",
    "encode_segment",
    "read_info",
]

MAGIC: Final = b"AS"
VERSION: Final = 1
SAMPLE_MIN: Final = -(2**31)
SAMPLE_MAX: Final = 2**31 - 1
MAX_CHANNELS: Final = 255
MAX_SAMPLES: Final = 2**32 - 1

_FLAG_ONE_DIMENSIONAL: Final = 1
# Own-past orders tried per channel. Past 32 the 2 bytes per coefficient no
# longer pay for themselves on a 10 s window.
_ORDERS: Final = (0, 1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32)
_MAX_SOURCES: Final = 4
_CROSS_LAGS: Final = 2  # a source channel's sample at the same instant and one before
_VERIFIED_ORDERS: Final = 3
_REWEIGHTINGS: Final = 2
_SOURCE_MARGIN_BITS: Final = 64.0
_SCALE_WINDOW = np.full(8, 1 / 8)
_COEF_BITS: Final = 15  # coefficients are int16: |q| < 2**15
_MAX_SHIFT: Final = 30
_UNIT_SHIFT: Final = 14  # a coefficient of exactly 1: 1 << 14 fits in int16
_HEADER = struct.Struct("<2sBBBII")  # magic, version, flags, channels, samples, crc32

# The range coder (its constants are written out in the compiled loops below
# and in docs/SIGNALS.md): LZMA's binary scheme, 32-bit range, 12-bit
# probabilities, 64 contexts of the running mean of |residual|.
# Adaptation speed: probabilities move by 1/2, 1/4, ... at first, then settle
# at 1/32, so a context learns in a few samples yet stays stable.
_RATE = np.array([1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 5], dtype=np.int64)


@dataclass(frozen=True)
class ChannelPredictor:
    """One channel's predictor as stored in the header.

    ``own`` are the coefficients of lags 1..p of the channel itself, ``sources``
    the earlier channels it also uses, ``cross`` their coefficients (lags 0 and
    1 of each source, in that order); all are integers scaled by ``2**shift``.
    """

    own: tuple[int, ...]
    sources: tuple[int, ...]
    cross: tuple[int, ...]
    shift: int


@dataclass(frozen=True)
class SegmentInfo:
    """A segment's header, read without decoding the samples."""

    channels: int
    samples: int
    one_dimensional: bool
    crc32: int
    predictors: tuple[ChannelPredictor, ...]


def encode_segment(samples: NDArray[np.integer]) -> bytes:
    """Encode one window of samples losslessly.

    Parameters
    ----------
    samples : numpy.ndarray
        Integer digital samples: shape ``(n_samples,)`` for one channel, or
        ``(n_channels, n_samples)`` for several channels of the same window,
        then coded jointly as by :func:`encode_block`. Values must lie within
        ``[-2**31, 2**31 - 1]``. An empty window (``n_samples == 0``) is allowed.

    Returns
    -------
    bytes
        A self-describing segment; :func:`decode` returns the same samples in
        the same shape.

    Raises
    ------
    TypeError
        If the array's dtype is not an integer type.
    ValueError
        For more than two dimensions, no channel or more than 255, more than
        ``2**32 - 1`` samples, or a value outside the signed 32-bit range.
    """
    array = np.asarray(samples)
    if array.ndim == 1:
        return _encode(_validated(array[np.newaxis, :]), one_dimensional=True)
    return encode_block(array)


def encode_block(channels: NDArray[np.integer], like: SegmentInfo | None = None) -> bytes:
    """Encode several channels of one window jointly, shape ``(n_channels, n_samples)``.

    Rows are coded in order and each may be predicted from the rows before it,
    so put independent leads first (I and II before III, aVR, aVL and aVF, the
    usual 12-lead order). Same rules and errors as :func:`encode_segment`.

    ``like``: the header of an earlier segment of the same channels. Its
    predictors' shape (each channel's order and source channels) is kept and only
    their coefficients are fitted to this window — several times faster than the
    full search, for the windows of a long recording between two searches. The
    segment is as self-contained as any other.
    """
    array = np.asarray(channels)
    if array.ndim != 2:
        raise ValueError(
            f"a block must have shape (n_channels, n_samples); got {array.ndim} dimension(s)"
        )
    if like is not None and like.channels != array.shape[0]:
        raise ValueError(f"like has {like.channels} channels; the block has {array.shape[0]}")
    return _encode(_validated(array), one_dimensional=False, like=like)


def decode(segment: bytes) -> NDArray[np.int32]:
    """Decode a segment into int32 samples.

    Returns shape ``(n_samples,)`` if the segment was encoded from a 1-D array,
    else ``(n_channels, n_samples)``.

    Raises
    ------
    ValueError
        If the bytes are not a segment of a known version, are truncated, or the
        decoded samples fail the segment's CRC-32.
    """
    compile_loops()
    info, offset = _parse_header(segment)
    n_channels, n_samples = info.channels, info.samples
    residuals = _decode_residuals(
        np.frombuffer(segment, dtype=np.uint8, offset=offset), n_channels, n_samples
    )
    tap_ptr, tap_src, tap_lag, tap_coef, shifts, warmup = _tap_arrays(info.predictors)
    block = _reconstruct(residuals, tap_ptr, tap_src, tap_lag, tap_coef, shifts, warmup)
    samples = block.astype("<i4")
    if zlib.crc32(samples) != info.crc32:
        raise ValueError("the segment is corrupt: its samples fail the CRC-32 check")
    return samples[0] if info.one_dimensional else samples


def read_info(segment: bytes) -> SegmentInfo:
    """Read a segment's header only: channel and sample counts, predictors, checksum."""
    return _parse_header(segment)[0]


# --- encoding ---------------------------------------------------------------------


def _validated(array: NDArray[np.generic]) -> NDArray[np.int64]:
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"samples must be integers; got dtype {array.dtype}")
    if not 1 <= array.shape[0] <= MAX_CHANNELS:
        raise ValueError(f"a segment has 1 to {MAX_CHANNELS} channels; got {array.shape[0]}")
    if array.shape[1] > MAX_SAMPLES:
        raise ValueError(f"at most {MAX_SAMPLES} samples per channel; got {array.shape[1]}")
    if array.size and (int(array.min()) < SAMPLE_MIN or int(array.max()) > SAMPLE_MAX):
        raise ValueError("samples must lie within the signed 32-bit range [-2**31, 2**31 - 1]")
    # A copy when needed for the compiled loops' one signature: C order, writable
    # (a reader's np.frombuffer view is read-only, a type of its own to numba).
    block = np.ascontiguousarray(array, dtype=np.int64)
    return block if block.flags.writeable else block.copy()


def _encode(block: NDArray[np.int64], *, one_dimensional: bool,
            like: SegmentInfo | None = None) -> bytes:
    compile_loops()
    n_channels, n_samples = block.shape
    if like is None:
        predictors = tuple(_fit_channel(block, c) for c in range(n_channels))
    else:
        predictors = tuple(_refit_channel(block, c, len(shape.own), shape.sources)
                           for c, shape in enumerate(like.predictors))
    tap_ptr, tap_src, tap_lag, tap_coef, shifts, warmup = _tap_arrays(predictors)
    residuals = _residuals(block, tap_ptr, tap_src, tap_lag, tap_coef, shifts, warmup)
    payload = _encode_residuals(residuals)
    crc = zlib.crc32(block.astype("<i4").tobytes())
    flags = _FLAG_ONE_DIMENSIONAL if one_dimensional else 0
    parts = [_HEADER.pack(MAGIC, VERSION, flags, n_channels, n_samples, crc)]
    for predictor in predictors:
        parts.append(
            struct.pack("<BBB", len(predictor.own), predictor.shift, len(predictor.sources))
        )
        parts.append(bytes(predictor.sources))
        parts.append(np.asarray(predictor.own + predictor.cross, dtype="<i2").tobytes())
    parts.append(payload)
    return b"".join(parts)


def _fit_channel(block: NDArray[np.int64], channel: int) -> ChannelPredictor:
    """Choose channel ``channel``'s predictor by the bytes it costs on this window.

    Least squares on the window itself (the covariance method, better than the
    autocorrelation method on short windows). Earlier channels are added as
    sources greedily, the one that lowers the residual energy most first, each
    kept only if the channel's real coded size, coefficients included, drops.
    """
    n_samples = block.shape[1]
    max_order = min(_ORDERS[-1], n_samples // 16)
    start = max(max_order, _CROSS_LAGS - 1)
    if n_samples - start < 8:
        return ChannelPredictor((), (), (), 0)
    # A copy of an earlier channel (a duplicated lead, a shared reference) is
    # that channel, exactly: a fit could miss it when large values make the
    # least squares ill-conditioned.
    for j in range(channel):
        if np.array_equal(block[j], block[channel]):
            return ChannelPredictor((), (j,), (1 << _UNIT_SHIFT, 0), _UNIT_SHIFT)
    x = block.astype(np.float64)
    # Feature rows: own lags 1..max_order, then lags 0.._CROSS_LAGS-1 of each
    # earlier channel. One Gram matrix serves every subset tried below.
    rows = [x[channel, start - lag : n_samples - lag] for lag in range(1, max_order + 1)]
    for j in range(channel):
        rows.extend(x[j, start - lag : n_samples - lag] for lag in range(_CROSS_LAGS))
    features = np.stack(rows) if rows else np.zeros((0, n_samples - start))
    target = x[channel, start:]
    fit = _weighted_fit(features, target, np.ones_like(target), max_order)
    # The coder pays about log |e| / local scale per sample, not e²: plain least
    # squares lets the QRS complexes dominate and amplifies the noise of the
    # quiet stretches. Weighting each sample by 1 / local scale² (iteratively
    # reweighted least squares) fits the predictor to what the coder pays.
    for _ in range(_REWEIGHTINGS):
        residual = target - fit.solve(fit.max_order, tuple(range(channel))) @ features
        scale = np.convolve(np.abs(residual), _SCALE_WINDOW, mode="same") + 0.5
        fit = _weighted_fit(features, target, 1.0 / scale**2, max_order)

    orders = [p for p in _ORDERS if p <= max_order]
    own_best, own_size = _best_order(block, channel, fit, orders, ())
    # Sources are chosen on the estimate alone (each real coding costs as much
    # as the whole fit); the result is kept only if it really codes smaller.
    sources: tuple[int, ...] = ()
    order = len(own_best.own)
    bits = _estimated_bits(fit, order, sources)
    while len(sources) < min(_MAX_SOURCES, channel):
        trials = [
            (_estimated_bits(fit, order, (*sources, j)), j)
            for j in range(channel)
            if j not in sources
        ]
        trial_bits, j = min(trials)
        if trial_bits > bits - _SOURCE_MARGIN_BITS:
            break
        bits, sources = trial_bits, (*sources, j)
    if not sources:
        return own_best
    # With good sources the channel's own past matters less: re-choose the order.
    _bits, order = min((_estimated_bits(fit, p, sources), p) for p in orders)
    coefficients = fit.solve(order, sources)
    joint = _quantized(coefficients[:order], sources, coefficients[order:])
    return joint if _coded_size(block, channel, joint) < own_size else own_best


def _refit_channel(block: NDArray[np.int64], channel: int, order: int,
                   sources: tuple[int, ...]) -> ChannelPredictor:
    """Coefficients for a predictor of a given shape, fitted to this window (reweighted
    as the search's fits are, on the chosen features only)."""
    n_samples = block.shape[1]
    order = min(order, n_samples // 16)
    start = max(order, _CROSS_LAGS - 1 if sources else 0)
    if (order == 0 and not sources) or n_samples - start < 8:
        return ChannelPredictor((), (), (), 0)
    x = block.astype(np.float64)
    rows = [x[channel, start - lag : n_samples - lag] for lag in range(1, order + 1)]
    for j in sources:
        rows.extend(x[j, start - lag : n_samples - lag] for lag in range(_CROSS_LAGS))
    features = np.stack(rows)
    target = x[channel, start:]
    every = tuple(range(len(sources)))
    fit = _weighted_fit(features, target, np.ones_like(target), order)
    for _ in range(_REWEIGHTINGS):
        residual = target - fit.solve(order, every) @ features
        scale = np.convolve(np.abs(residual), _SCALE_WINDOW, mode="same") + 0.5
        fit = _weighted_fit(features, target, 1.0 / scale**2, order)
    coefficients = fit.solve(order, every)
    return _quantized(coefficients[:order], sources, coefficients[order:])


def _weighted_fit(
    features: NDArray[np.float64],
    target: NDArray[np.float64],
    weights: NDArray[np.float64],
    max_order: int,
) -> _Fit:
    root = np.sqrt(weights)
    weighted = features * root
    weighted_target = target * root
    return _Fit(
        _gram(weighted),
        weighted @ weighted_target,
        float(weighted_target @ weighted_target),
        max_order,
        target.size,
    )


class _Fit:
    """Least-squares solutions for subsets of one channel's features."""

    def __init__(
        self,
        gram: NDArray[np.float64],
        moment: NDArray[np.float64],
        energy: float,
        max_order: int,
        samples: int,
    ) -> None:
        self.gram = gram
        self.moment = moment
        self.target_energy = energy
        self.max_order = max_order
        self.samples = samples

    def _indices(self, order: int, sources: tuple[int, ...]) -> NDArray[np.int64]:
        own = list(range(order))
        cross = [
            self.max_order + s * _CROSS_LAGS + lag for s in sources for lag in range(_CROSS_LAGS)
        ]
        return np.array(own + cross, dtype=np.int64)

    def solve(self, order: int, sources: tuple[int, ...]) -> NDArray[np.float64]:
        index = self._indices(order, sources)
        if index.size == 0:
            return np.zeros(0)
        gram = self.gram[np.ix_(index, index)].copy()
        # A tiny ridge keeps the solve defined when features are collinear
        # (a constant channel, two equal channels).
        gram.flat[:: index.size + 1] += 1e-9 * (np.trace(gram) / index.size + 1.0)
        return np.asarray(np.linalg.solve(gram, self.moment[index]), dtype=np.float64)

    def energy(self, order: int, sources: tuple[int, ...]) -> float:
        """Residual energy of the unquantized solution."""
        index = self._indices(order, sources)
        solution = self.solve(order, sources)
        return self.target_energy - float(solution @ self.moment[index])


def _estimated_bits(fit: _Fit, order: int, sources: tuple[int, ...]) -> float:
    """Bits of a Gaussian residual with the fit's (weighted) energy, plus 16 a coefficient."""
    energy = max(fit.energy(order, sources), 1e-3 * fit.samples)
    coefficients = order + _CROSS_LAGS * len(sources)
    return float(0.5 * fit.samples * np.log2(energy / fit.samples) + 16 * coefficients)


def _best_order(
    block: NDArray[np.int64],
    channel: int,
    fit: _Fit,
    orders: list[int],
    sources: tuple[int, ...],
) -> tuple[ChannelPredictor, int]:
    """The order with the smallest real coded size among the few the estimate favours.

    The estimate is a Gaussian residual's bits, ``n/2 · log2(energy / n)``,
    plus 16 bits a coefficient; only the best ``_VERIFIED_ORDERS`` of it are
    coded for real.
    """
    estimates = [(_estimated_bits(fit, p, sources), p) for p in orders]
    best = ChannelPredictor((), (), (), 0)
    best_size = -1
    # Orders 1 and 2 are always tried: on a slow, coarsely quantized signal a
    # plain difference can beat any fitted predictor.
    verified = {p for _bits, p in sorted(estimates)[:_VERIFIED_ORDERS]}
    verified.update(p for p in (1, 2) if p in orders)
    for p in sorted(verified):
        coefficients = fit.solve(p, sources)
        predictor = _quantized(coefficients[:p], sources, coefficients[p:])
        size = _coded_size(block, channel, predictor)
        if best_size < 0 or size < best_size:
            best, best_size = predictor, size
    return best, best_size


def _quantized(
    own: NDArray[np.float64], sources: tuple[int, ...], cross: NDArray[np.float64]
) -> ChannelPredictor:
    coefficients = np.concatenate([own, cross])
    largest = float(np.max(np.abs(coefficients))) if coefficients.size else 0.0
    if largest == 0.0 or not np.isfinite(largest):
        return ChannelPredictor((0,) * own.size, sources, (0,) * cross.size, 0)
    # As many fractional bits as int16 allows, with a bit to spare so that a
    # coefficient just under a power of two (0.99999…) rounds without clipping.
    shift = int(np.clip(_COEF_BITS - 2 - np.floor(np.log2(largest)), 0, _MAX_SHIFT))
    q = np.clip(np.rint(coefficients * 2.0**shift), -(2**15) + 1, 2**15 - 1).astype(int)
    return ChannelPredictor(
        tuple(int(v) for v in q[: own.size]),
        sources,
        tuple(int(v) for v in q[own.size :]),
        shift,
    )


def _coded_size(block: NDArray[np.int64], channel: int, predictor: ChannelPredictor) -> int:
    """Bytes the channel would take coded alone with ``predictor``, header entry included."""
    single = tuple(
        predictor if c == channel else ChannelPredictor((), (), (), 0)
        for c in range(block.shape[0])
    )
    residuals = _channel_residuals(block, channel, *_tap_arrays(single))
    payload = _encode_residuals(residuals[np.newaxis, :])
    coefficient_count = len(predictor.own) + len(predictor.cross)
    return len(payload) + 3 + len(predictor.sources) + 2 * coefficient_count


def _tap_arrays(
    predictors: tuple[ChannelPredictor, ...],
) -> tuple[
    NDArray[np.int64],
    NDArray[np.int64],
    NDArray[np.int64],
    NDArray[np.int64],
    NDArray[np.int64],
    NDArray[np.int64],
]:
    """Flatten the predictors into (channel → taps) arrays the compiled loops read."""
    tap_ptr = [0]
    tap_src: list[int] = []
    tap_lag: list[int] = []
    tap_coef: list[int] = []
    warmup = []
    for c, predictor in enumerate(predictors):
        for lag, coef in enumerate(predictor.own, start=1):
            tap_src.append(c)
            tap_lag.append(lag)
            tap_coef.append(coef)
        for i, source in enumerate(predictor.sources):
            for lag in range(_CROSS_LAGS):
                tap_src.append(source)
                tap_lag.append(lag)
                tap_coef.append(predictor.cross[i * _CROSS_LAGS + lag])
        tap_ptr.append(len(tap_src))
        deepest = len(predictor.own)
        if predictor.sources:
            deepest = max(deepest, _CROSS_LAGS - 1)
        warmup.append(deepest)
    return (
        np.array(tap_ptr, dtype=np.int64),
        np.array(tap_src, dtype=np.int64),
        np.array(tap_lag, dtype=np.int64),
        np.array(tap_coef, dtype=np.int64),
        np.array([p.shift for p in predictors], dtype=np.int64),
        np.array(warmup, dtype=np.int64),
    )


# --- decoding the header ----------------------------------------------------------


def _parse_header(segment: bytes) -> tuple[SegmentInfo, int]:
    if len(segment) < _HEADER.size:
        raise ValueError("not an Atrium signal segment: shorter than its header")
    magic, version, flags, n_channels, n_samples, crc = _HEADER.unpack_from(segment)
    if magic != MAGIC:
        raise ValueError("not an Atrium signal segment: wrong magic bytes")
    if version != VERSION:
        raise ValueError(f"unsupported signal segment version {version}; this reader knows 1")
    if n_channels == 0:
        raise ValueError("corrupt signal segment: zero channels")
    offset = _HEADER.size
    predictors = []
    # Every segment read passes here while holding the GIL, so this loop stays
    # plain struct calls (numpy views and per-value conversions took 8 times as long).
    try:
        for c in range(n_channels):
            order, shift, n_sources = struct.unpack_from("<BBB", segment, offset)
            offset += 3
            sources = tuple(segment[offset : offset + n_sources])
            offset += n_sources
            if len(sources) != n_sources or (sources and max(sources) >= c):
                raise ValueError("corrupt signal segment: bad source channel")
            if shift > _MAX_SHIFT:
                raise ValueError("corrupt signal segment: coefficient shift over 30")
            count = order + n_sources * _CROSS_LAGS
            values = struct.unpack_from(f"<{count}h", segment, offset)
            offset += 2 * count
            predictors.append(ChannelPredictor(values[:order], sources, values[order:], shift))
    except struct.error as error:
        raise ValueError("corrupt signal segment: truncated header") from error
    info = SegmentInfo(
        n_channels, n_samples, bool(flags & _FLAG_ONE_DIMENSIONAL), crc, tuple(predictors)
    )
    return info, offset


# --- compiled loops: prediction ---------------------------------------------------


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _gram(features):  # type: ignore[no-untyped-def]
    # Compiled rather than BLAS: these matrices are small, and BLAS threads
    # fight over the cores Orthanc shares with the database. Reassociation lets
    # the sums run in SIMD lanes (several times faster); the fit is a choice of
    # the encoder's, which the decoder never repeats, so its last bits are free.
    k, n = features.shape
    gram = np.empty((k, k), dtype=np.float64)
    for i in range(k):
        for j in range(i + 1):
            acc = 0.0
            for t in range(n):
                acc += features[i, t] * features[j, t]
            gram[i, j] = acc
            gram[j, i] = acc
    return gram


@numba.njit(cache=True, nogil=True, inline="always")
def _prediction(x, c, n, tap_ptr, tap_src, tap_lag, tap_coef, shift, warm):  # type: ignore[no-untyped-def]
    # The first samples, before the deepest tap reaches into the window, use the
    # fixed polynomial predictors of order 0, 1 and 2 on the channel itself.
    if n < warm:
        if n == 0:
            return 0
        if n == 1:
            return x[c, 0]
        value = 2 * x[c, n - 1] - x[c, n - 2]
    else:
        acc = 0
        for t in range(tap_ptr[c], tap_ptr[c + 1]):
            acc += tap_coef[t] * x[tap_src[t], n - tap_lag[t]]
        value = (acc + ((1 << shift) >> 1)) >> shift
    # Clamped so that a residual always fits in 33 bits.
    return min(max(value, -2147483648), 2147483647)


@numba.njit(cache=True, nogil=True)
def _channel_residuals(x, c, tap_ptr, tap_src, tap_lag, tap_coef, shifts, warmup):  # type: ignore[no-untyped-def]
    n_samples = x.shape[1]
    out = np.empty(n_samples, dtype=np.int64)
    for n in range(n_samples):
        pred = _prediction(x, c, n, tap_ptr, tap_src, tap_lag, tap_coef, shifts[c], warmup[c])
        out[n] = x[c, n] - pred
    return out


@numba.njit(cache=True, nogil=True)
def _residuals(x, tap_ptr, tap_src, tap_lag, tap_coef, shifts, warmup):  # type: ignore[no-untyped-def]
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        out[c] = _channel_residuals(x, c, tap_ptr, tap_src, tap_lag, tap_coef, shifts, warmup)
    return out


@numba.njit(cache=True, nogil=True)
def _reconstruct(residuals, tap_ptr, tap_src, tap_lag, tap_coef, shifts, warmup):  # type: ignore[no-untyped-def]
    # The same predictions as _prediction, summed in two parts: the taps on
    # earlier channels (already whole) for every sample at once, then the taps on
    # the channel's own past, which must wait for each sample in turn.
    n_channels, n_samples = residuals.shape
    x = np.zeros_like(residuals)
    cross = np.empty(n_samples, dtype=np.int64)
    for c in range(n_channels):
        warm = min(warmup[c], n_samples)
        shift = shifts[c]
        half = (1 << shift) >> 1
        cross[:] = 0
        n_own = 0
        for t in range(tap_ptr[c], tap_ptr[c + 1]):
            if tap_src[t] == c:
                n_own += 1
            else:
                src, lag, coef = tap_src[t], tap_lag[t], tap_coef[t]
                for n in range(warm, n_samples):
                    cross[n] += coef * x[src, n - lag]
        own_lag = np.empty(n_own, dtype=np.int64)
        own_coef = np.empty(n_own, dtype=np.int64)
        j = 0
        for t in range(tap_ptr[c], tap_ptr[c + 1]):
            if tap_src[t] == c:
                own_lag[j] = tap_lag[t]
                own_coef[j] = tap_coef[t]
                j += 1
        row = x[c]
        for n in range(warm):
            if n == 0:
                value = 0
            elif n == 1:
                value = row[0]
            else:
                value = 2 * row[n - 1] - row[n - 2]
            row[n] = residuals[c, n] + min(max(value, -2147483648), 2147483647)
        for n in range(warm, n_samples):
            acc = cross[n]
            for k in range(n_own):
                acc += own_coef[k] * row[n - own_lag[k]]
            value = (acc + half) >> shift
            row[n] = residuals[c, n] + min(max(value, -2147483648), 2147483647)
    return x


# --- compiled loops: the adaptive range coder -------------------------------------
#
# Each residual e is coded as: the bit length L of |e| (0 for e == 0) with a
# 6-bit binary tree under a context that tracks the running mean of |e|; then
# the bits of |e| under its leading one, the first two with a model per L and
# the rest raw; then the sign.


# Encoder state: low (33 bits with the carry), range, the byte held back for a
# carry (``cache``), how many bytes are pending (``pending``: the cache and the
# 0xFF bytes after it), the output position — scalars, as in the decoder.


@numba.njit(cache=True, nogil=True, inline="always")
def _shift_low(low, cache, pending, pos, out):  # type: ignore[no-untyped-def]
    if low < 0xFF000000 or low >= 0x100000000:
        carry = low >> 32
        temp = cache
        while True:
            out[pos] = (temp + carry) & 0xFF
            pos += 1
            temp = 0xFF
            pending -= 1
            if pending == 0:
                break
        cache = (low >> 24) & 0xFF
    pending += 1
    low = (low & 0x00FFFFFF) << 8
    return low, cache, pending, pos


@numba.njit(cache=True, nogil=True, inline="always")
def _encode_bit(low, rng, cache, pending, pos, out, probs, counts, rate, i, bit):  # type: ignore[no-untyped-def]
    p = probs[i]
    bound = (rng >> 12) * p
    seen = counts[i]
    speed = rate[seen]
    one = -np.int64(bit)  # all ones when the bit is 1: no branch, as in the decoder
    low += bound & one
    rng = (bound & ~one) | ((rng - bound) & one)
    probs[i] = p + ((((4096 - p) >> speed) & ~one) - ((p >> speed) & one))
    counts[i] = seen + (seen < rate.size - 1)
    while rng < 0x1000000:
        rng <<= 8
        low, cache, pending, pos = _shift_low(low, cache, pending, pos, out)
    return low, rng, cache, pending, pos


@numba.njit(cache=True, nogil=True, inline="always")
def _encode_raw(low, rng, cache, pending, pos, out, value, n_bits):  # type: ignore[no-untyped-def]
    for i in range(n_bits - 1, -1, -1):
        rng >>= 1
        if (value >> i) & 1:
            low += rng
        while rng < 0x1000000:
            rng <<= 8
            low, cache, pending, pos = _shift_low(low, cache, pending, pos, out)
    return low, rng, cache, pending, pos


# The decoder's state (code, range, input position) is threaded through return
# values too, so that the compiler holds it in registers, and a decision is taken
# without a branch (masks instead of if/else): a near-even bit is a coin toss to
# the processor's branch predictor. Together two to three times the speed of an
# array-held state with branches (measured on 10 s, 12-lead blocks). ``data``
# ends with one zero byte past the payload, which every read beyond the end lands
# on (the encoder drops trailing zeros).


@numba.njit(cache=True, nogil=True, inline="always")
def _decode_bit(code, rng, pos, data, probs, counts, rate, i):  # type: ignore[no-untyped-def]
    p = probs[i]
    bound = (rng >> 12) * p
    seen = counts[i]
    speed = rate[seen]
    bit = np.int64(code >= bound)
    one = -bit  # all ones when the bit is 1
    code -= bound & one
    rng = (bound & ~one) | ((rng - bound) & one)
    probs[i] = p + ((((4096 - p) >> speed) & ~one) - ((p >> speed) & one))
    counts[i] = seen + (seen < rate.size - 1)
    last = data.size - 1
    while rng < 0x1000000:
        rng <<= 8
        code = (code << 8) | data[min(pos, last)]
        pos += 1
    return code, rng, pos, bit


@numba.njit(cache=True, nogil=True, inline="always")
def _decode_raw(code, rng, pos, data, n_bits):  # type: ignore[no-untyped-def]
    value = 0
    last = data.size - 1
    for _ in range(n_bits):
        rng >>= 1
        bit = np.int64(code >= rng)
        code -= rng & -bit
        value = (value << 1) | bit
        while rng < 0x1000000:
            rng <<= 8
            code = (code << 8) | data[min(pos, last)]
            pos += 1
    return code, rng, pos, value


@numba.njit(cache=True, nogil=True, inline="always")
def _bit_length(v):  # type: ignore[no-untyped-def]
    n = 0
    while v > 0:
        v >>= 1
        n += 1
    return n


@numba.njit(cache=True, nogil=True, inline="always")
def _context(mean16):  # type: ignore[no-untyped-def]
    # Half-octave steps of the running mean (kept as 16 × mean |e|).
    n = _bit_length(mean16)
    ctx = n if n < 2 else 2 * n - 2 + ((mean16 >> (n - 2)) & 1)
    return min(ctx, 63)


@numba.njit(cache=True, nogil=True)
def _rc_encode(residuals, rate):  # type: ignore[no-untyped-def]
    n_channels, n_samples = residuals.shape
    out = np.zeros(n_channels * n_samples * 20 + 16, dtype=np.uint8)
    low = np.int64(0)
    rng = np.int64(0xFFFFFFFF)
    cache = np.int64(0)
    pending = np.int64(1)
    pos = 0
    length_probs = np.full(64 * 64, 2048, dtype=np.int32)
    length_counts = np.zeros(64 * 64, dtype=np.int32)
    mantissa_probs = np.full(64 * 4, 2048, dtype=np.int32)
    mantissa_counts = np.zeros(64 * 4, dtype=np.int32)
    sign_probs = np.full(3, 2048, dtype=np.int32)
    sign_counts = np.zeros(3, dtype=np.int32)
    for c in range(n_channels):
        mean16 = 0
        previous_sign = 1
        for n in range(n_samples):
            e = residuals[c, n]
            m = -e if e < 0 else e
            length = _bit_length(m)
            base = _context(mean16) * 64
            node = 1
            for i in range(5, -1, -1):
                bit = (length >> i) & 1
                low, rng, cache, pending, pos = _encode_bit(
                    low, rng, cache, pending, pos, out, length_probs, length_counts, rate,
                    base + node, bit
                )
                node = 2 * node + bit
            if length >= 2:
                below = length - 1
                k = 2 if below >= 2 else 1
                top = (m >> (below - k)) & ((1 << k) - 1)
                node = 1
                for i in range(k - 1, -1, -1):
                    bit = (top >> i) & 1
                    low, rng, cache, pending, pos = _encode_bit(
                        low, rng, cache, pending, pos, out, mantissa_probs, mantissa_counts,
                        rate, length * 4 + node, bit
                    )
                    node = 2 * node + bit
                low, rng, cache, pending, pos = _encode_raw(
                    low, rng, cache, pending, pos, out, m & ((1 << (below - k)) - 1), below - k
                )
            if m != 0:
                sign = 1 if e < 0 else 0
                low, rng, cache, pending, pos = _encode_bit(
                    low, rng, cache, pending, pos, out, sign_probs, sign_counts, rate,
                    previous_sign, sign
                )
                previous_sign = 2 * sign
            else:
                previous_sign = 1
            mean16 += ((m << 4) - mean16) >> 2
    for _ in range(5):
        low, cache, pending, pos = _shift_low(low, cache, pending, pos, out)
    return out[:pos]


@numba.njit(cache=True, nogil=True)
def _rc_decode(data, n_channels, n_samples, rate):  # type: ignore[no-untyped-def]
    residuals = np.zeros((n_channels, n_samples), dtype=np.int64)
    code = np.int64(0)
    rng = np.int64(0xFFFFFFFF)
    pos = 0
    for _ in range(4):
        code = (code << 8) | data[min(pos, data.size - 1)]
        pos += 1
    length_probs = np.full(64 * 64, 2048, dtype=np.int32)
    length_counts = np.zeros(64 * 64, dtype=np.int32)
    mantissa_probs = np.full(64 * 4, 2048, dtype=np.int32)
    mantissa_counts = np.zeros(64 * 4, dtype=np.int32)
    sign_probs = np.full(3, 2048, dtype=np.int32)
    sign_counts = np.zeros(3, dtype=np.int32)
    for c in range(n_channels):
        mean16 = 0
        previous_sign = 1
        for n in range(n_samples):
            base = _context(mean16) * 64
            node = 1
            for _ in range(6):
                code, rng, pos, bit = _decode_bit(
                    code, rng, pos, data, length_probs, length_counts, rate, base + node
                )
                node = 2 * node + bit
            length = node - 64
            if length > 33:
                # No residual is that long (|e| < 2**33): the payload is corrupt.
                return residuals, False
            m = 0
            if length == 1:
                m = 1
            elif length >= 2:
                below = length - 1
                k = 2 if below >= 2 else 1
                node = 1
                for _ in range(k):
                    code, rng, pos, bit = _decode_bit(
                        code, rng, pos, data, mantissa_probs, mantissa_counts, rate,
                        length * 4 + node
                    )
                    node = 2 * node + bit
                top = node - (1 << k)
                code, rng, pos, rest = _decode_raw(code, rng, pos, data, below - k)
                m = (((1 << k) | top) << (below - k)) | rest
            e = m
            if m != 0:
                code, rng, pos, sign = _decode_bit(
                    code, rng, pos, data, sign_probs, sign_counts, rate, previous_sign
                )
                previous_sign = 2 * sign
                if sign:
                    e = -m
            else:
                previous_sign = 1
            residuals[c, n] = e
            mean16 += ((m << 4) - mean16) >> 2
    return residuals, True


def _encode_residuals(residuals: NDArray[np.int64]) -> bytes:
    """Range-code the residuals; the encoder's first byte (always 0) and the
    trailing zero bytes are dropped, since the decoder reads zeros past the end."""
    coded = _rc_encode(np.ascontiguousarray(residuals), _RATE)
    return bytes(coded[1:]).rstrip(b"\x00")


def _decode_residuals(
    payload: NDArray[np.uint8], n_channels: int, n_samples: int
) -> NDArray[np.int64]:
    padded = np.zeros(payload.size + 1, dtype=np.uint8)
    padded[:-1] = payload
    result, ok = _rc_decode(padded, n_channels, n_samples, _RATE)
    if not ok:
        raise ValueError("the segment is corrupt: its payload does not decode")
    return np.asarray(result, dtype=np.int64)


# --- compiling the loops ----------------------------------------------------------

_I64 = numba.types.int64
_I64_1D = numba.types.int64[::1]
_I64_2D = numba.types.int64[:, ::1]
_TAPS = (_I64_1D,) * 6  # tap_ptr, tap_src, tap_lag, tap_coef, shifts, warmup
_SIGNATURES: Final = (
    (_gram, (numba.types.float64[:, ::1],)),
    (_channel_residuals, (_I64_2D, _I64, *_TAPS)),
    (_residuals, (_I64_2D, *_TAPS)),
    (_reconstruct, (_I64_2D, *_TAPS)),
    (_rc_encode, (_I64_2D, _I64_1D)),
    (_rc_decode, (numba.types.uint8[::1], _I64, _I64, _I64_1D)),
)
_COMPILER_STACK_BYTES: Final = 256 * 1024 * 1024
_compile_lock = threading.Lock()
_compiled = False


def compile_loops() -> None:
    """Compile every loop for the one signature the codec calls it with — or load
    it from numba's cache — then forbid compiling any other; at once if done.

    numba compiles a function on its first call, on the calling thread, and LLVM
    recurses deeply while it does. Orthanc's HTTP threads have small stacks: a
    first upload there overflowed one and killed the whole process. So the work
    runs on a thread of its own with :data:`_COMPILER_STACK_BYTES` of stack
    (address space; only what is touched is used), whoever asks first, and every
    other caller waits for it. Afterwards a call with other argument types raises
    ``TypeError`` rather than compiling on whatever thread made it.

    About 7 s of CPU on a cold cache, half a second from numba's cache. Atrium
    asks at start (:meth:`atrium.app.Atrium.start`) so that no request waits.

    Raises
    ------
    RuntimeError
        If compiling failed (the next call tries again).
    """
    global _compiled
    if _compiled:
        return
    with _compile_lock:
        if _compiled:
            return
        failures: list[BaseException] = []
        previous = threading.stack_size(_COMPILER_STACK_BYTES)
        try:
            compiler = threading.Thread(target=_compile_all, args=(failures,),
                                        name="atrium-codec-compile", daemon=True)
            compiler.start()
        finally:
            threading.stack_size(previous)
        compiler.join()
        if failures:
            raise RuntimeError("the signal codec's loops did not compile") from failures[0]
        _compiled = True


def _compile_all(failures: list[BaseException]) -> None:
    try:
        for dispatcher, signature in _SIGNATURES:
            dispatcher.compile(signature)
        for dispatcher, _ in _SIGNATURES:
            dispatcher.disable_compile()
    except BaseException as error:  # noqa: BLE001 - handed to the waiting caller
        failures.append(error)
