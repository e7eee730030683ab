"""Atrium's signal codec: integer-exact round trips and its size goals.

The sizes asserted are the issue's goals on the real records (FLAC at its best
gives 0.508 and 0.740 bytes/sample on the same samples); sizes are properties
of the bytes, not timings, so they are asserted here.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from atrium.signals.codec import (
    MAGIC,
    VERSION,
    decode,
    encode_block,
    encode_segment,
    read_info,
)

DATA = Path("/work/shared/data/signals")
if not DATA.is_dir():
    DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "signals"
needs_records = pytest.mark.skipif(not DATA.is_dir(), reason="shared signal records absent")

# The digital ranges of WFDB/EDF formats: 8 (format 80/8), 12 (212, 310,
# 311), 16 (16, EDF), 24 (24, BDF) and 32 bits (32).
FORMAT_BITS = (8, 12, 16, 24, 32)
WINDOW_SECONDS = 10
PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


@st.composite
def _channel(draw: st.DrawFn, max_length: int = 600) -> np.ndarray:
    low, high = _range(draw(st.sampled_from(FORMAT_BITS)))
    length = draw(st.integers(0, max_length))
    kind = draw(st.sampled_from(["random", "walk", "constant", "extremes"]))
    if kind == "random":
        return draw(hnp.arrays(np.int64, length, elements=st.integers(low, high)))
    if kind == "constant":
        return np.full(length, draw(st.integers(low, high)), dtype=np.int64)
    if kind == "extremes":
        picks = draw(hnp.arrays(np.int64, length, elements=st.sampled_from([low, high, 0])))
        return picks
    steps = draw(hnp.arrays(np.int64, length, elements=st.integers(-50, 50)))
    return np.clip(np.cumsum(steps), low, high)


def _round_trip(samples: np.ndarray) -> np.ndarray:
    decoded = decode(encode_segment(samples))
    assert decoded.dtype == np.int32
    return decoded


@PROPERTY_SETTINGS
@given(_channel())
def test_one_channel_comes_back_integer_exact(samples: np.ndarray) -> None:
    decoded = _round_trip(samples)
    assert decoded.shape == samples.shape
    np.testing.assert_array_equal(decoded, samples)


@PROPERTY_SETTINGS
@given(st.integers(1, 5).flatmap(lambda n: st.lists(_channel(300), min_size=n, max_size=n)))
def test_a_block_of_channels_comes_back_integer_exact(channels: list[np.ndarray]) -> None:
    length = min(len(c) for c in channels)
    block = np.stack([c[:length] for c in channels])
    decoded = decode(encode_block(block))
    assert decoded.shape == block.shape
    np.testing.assert_array_equal(decoded, block)


@PROPERTY_SETTINGS
@given(_channel(400), st.integers(2, 6))
def test_equal_channels_round_trip_and_cost_little_more_than_one(
    samples: np.ndarray, copies: int
) -> None:
    block = np.tile(samples, (copies, 1))
    segment = encode_block(block)
    np.testing.assert_array_equal(decode(segment), block)
    # Each copy is predicted exactly from the first: its residuals are zeros.
    if samples.size >= 200:
        assert len(segment) <= len(encode_segment(samples)) + copies * 80


@pytest.mark.parametrize("bits", FORMAT_BITS)
@pytest.mark.parametrize("length", [1, 2, 3, 7, 31, 33, 1001])
def test_extremes_of_each_format_range_round_trip(bits: int, length: int) -> None:
    low, high = _range(bits)
    samples = np.resize(np.array([low, high, high, low, 0, -1]), length)
    np.testing.assert_array_equal(_round_trip(samples), samples)


def test_the_full_32_bit_range_round_trips_in_every_integer_dtype() -> None:
    rng = np.random.default_rng(7)
    samples = rng.integers(-(2**31), 2**31, size=999, dtype=np.int64)
    for dtype in (np.int32, np.int64):
        np.testing.assert_array_equal(_round_trip(samples.astype(dtype)), samples)
    small = rng.integers(0, 255, size=99).astype(np.uint8)
    np.testing.assert_array_equal(_round_trip(small), small)


def test_an_empty_segment_round_trips() -> None:
    segment = encode_segment(np.array([], dtype=np.int16))
    assert decode(segment).shape == (0,)
    assert decode(encode_block(np.zeros((3, 0), dtype=np.int32))).shape == (3, 0)


def test_a_constant_segment_costs_almost_nothing() -> None:
    segment = encode_segment(np.full(3600, -1024, dtype=np.int16))
    assert len(segment) < 40


def test_the_header_describes_the_segment() -> None:
    block = np.stack([np.arange(500), 2 * np.arange(500)])
    segment = encode_block(block)
    info = read_info(segment)
    assert segment[:2] == MAGIC and segment[2] == VERSION
    assert (info.channels, info.samples, info.one_dimensional) == (2, 500, False)
    assert len(info.predictors) == 2
    assert read_info(encode_segment(np.arange(5))).one_dimensional


@pytest.mark.parametrize(
    ("samples", "error"),
    [
        (np.array([0.5, 1.0]), TypeError),
        (np.array([True, False]), TypeError),
        (np.array([2**31]), ValueError),
        (np.array([-(2**31) - 1]), ValueError),
        (np.zeros((2, 2, 2), dtype=np.int16), ValueError),
        (np.zeros((256, 4), dtype=np.int16), ValueError),
        (np.zeros((0, 4), dtype=np.int16), ValueError),
    ],
)
def test_invalid_samples_are_refused(samples: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_segment(samples)


def test_foreign_truncated_or_corrupt_bytes_are_refused() -> None:
    samples = np.cumsum(np.random.default_rng(3).integers(-20, 21, size=2000))
    segment = bytearray(encode_segment(samples))
    with pytest.raises(ValueError, match="magic"):
        decode(b"XX" + bytes(segment[2:]))
    with pytest.raises(ValueError, match="version"):
        decode(bytes(segment[:2]) + b"\x09" + bytes(segment[3:]))
    with pytest.raises(ValueError, match="header"):
        decode(bytes(segment[:5]))
    for position in range(60, len(segment), max(1, len(segment) // 40)):
        corrupt = bytearray(segment)
        corrupt[position] ^= 0x5A
        with pytest.raises(ValueError, match="corrupt"):
            decode(bytes(corrupt))


# --- the real records --------------------------------------------------------------


@functools.cache
def _record(name: str) -> tuple[np.ndarray, int]:
    import wfdb

    record = wfdb.rdrecord(str(DATA / name), physical=False)
    return record.d_signal.T.astype(np.int64), int(record.fs)


def _windows(name: str) -> list[np.ndarray]:
    samples, rate = _record(name)
    width = WINDOW_SECONDS * rate
    return [samples[:, s : s + width] for s in range(0, samples.shape[1], width)]


@functools.cache
def _per_channel_bytes(name: str) -> float:
    total = count = 0
    for window in _windows(name):
        for channel in window:
            segment = encode_segment(channel)
            np.testing.assert_array_equal(decode(segment), channel)
            total += len(segment)
            count += channel.size
    return total / count


@functools.cache
def _joint_bytes(name: str) -> float:
    total = count = 0
    for window in _windows(name):
        segment = encode_block(window)
        np.testing.assert_array_equal(decode(segment), window)
        total += len(segment)
        count += window.size
    return total / count


@needs_records
@pytest.mark.parametrize("name", ["100", "s0010_re"])
def test_real_records_round_trip_exactly_in_ten_second_windows(name: str) -> None:
    # The helpers assert equality window by window; the size is a by-product.
    assert _per_channel_bytes(name) > 0
    assert _joint_bytes(name) > 0


@needs_records
def test_record_100_takes_at_most_048_bytes_a_sample_one_channel_a_segment() -> None:
    assert _per_channel_bytes("100") <= 0.48


@needs_records
def test_s0010_re_takes_at_most_062_bytes_a_sample_all_leads_a_segment() -> None:
    assert _joint_bytes("s0010_re") <= 0.62


@needs_records
def test_joint_segments_beat_flac_on_record_100_too() -> None:
    assert _joint_bytes("100") <= 0.48


@needs_records
def test_a_refit_of_an_earlier_shape_decodes_exactly_and_costs_about_the_same() -> None:
    windows = _windows("s0010_re")
    searched = encode_block(windows[0])
    shape = read_info(searched)
    for window in windows[1:4]:
        refit = encode_block(window, like=shape)
        np.testing.assert_array_equal(decode(refit), window)
        info = read_info(refit)
        assert [(len(p.own), p.sources) for p in info.predictors] == \
            [(len(p.own), p.sources) for p in shape.predictors], "the shape is kept"
        assert len(refit) <= 1.05 * len(encode_block(window))


@given(channels=st.integers(1, 4), samples=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_shape_refits_any_block_of_as_many_channels(channels: int, samples: int,
                                                        seed: int) -> None:
    rng = np.random.default_rng(seed)
    donor = np.cumsum(rng.integers(-50, 50, size=(channels, 400)), axis=1)
    block = np.cumsum(rng.integers(-3000, 3000, size=(channels, samples)), axis=1)
    block[-1] = block[0]  # a channel equal to an earlier one
    refit = encode_block(block, like=read_info(encode_block(donor)))
    np.testing.assert_array_equal(decode(refit), block)


def test_a_shape_of_another_channel_count_is_refused() -> None:
    shape = read_info(encode_block(np.zeros((2, 100), dtype=np.int32)))
    with pytest.raises(ValueError, match="channels"):
        encode_block(np.zeros((3, 100), dtype=np.int32), like=shape)


@pytest.mark.parametrize("value", [2**31 - 1, -(2**31), 2**23 - 1])
def test_a_copy_of_an_earlier_channel_costs_next_to_nothing_even_at_extreme_values(
        value: int) -> None:
    samples = np.full(400, value, dtype=np.int64)
    samples[[17, 230]] = [0, -value // 2]
    block = np.tile(samples, (5, 1))
    segment = encode_block(block)
    np.testing.assert_array_equal(decode(segment), block)
    copy = read_info(segment).predictors[3]
    assert copy.sources == (0,) and copy.own == ()
    assert len(segment) <= len(encode_segment(samples)) + 4 * 40
