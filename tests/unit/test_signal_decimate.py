"""Min/max decimation for display: every bucket's extremes survive, never more than
``max_points`` points, in time order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from atrium.signals.store import decimation_edges, min_max_decimate

_samples = hnp.arrays(np.int32, st.integers(0, 3000),
                      elements=st.integers(-(2**31), 2**31 - 1))
_max_points = st.integers(2, 500)


@settings(max_examples=200, deadline=None)
@given(samples=_samples, max_points=_max_points)
def test_output_never_exceeds_max_points_and_is_in_time_order(samples: np.ndarray,
                                                              max_points: int) -> None:
    indices, values = min_max_decimate(samples, max_points)
    assert indices.size == values.size <= max_points
    assert np.all(np.diff(indices) > 0)
    np.testing.assert_array_equal(values, samples[indices])


@settings(max_examples=200, deadline=None)
@given(samples=_samples, max_points=_max_points)
def test_every_bucket_keeps_its_minimum_and_maximum(samples: np.ndarray,
                                                    max_points: int) -> None:
    indices, values = min_max_decimate(samples, max_points)
    edges = decimation_edges(samples.size, max_points)
    assert edges[0] == 0 and edges[-1] == samples.size
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        bucket = samples[low:high]
        inside = values[(indices >= low) & (indices < high)]
        assert 1 <= inside.size <= 2
        assert inside.min() == bucket.min() and inside.max() == bucket.max()


@settings(max_examples=100, deadline=None)
@given(length=st.integers(1, 100_000), spike_at=st.integers(0, 99_999),
       spike=st.sampled_from([-5000, 5000]), max_points=st.integers(2, 2000))
def test_a_single_sample_spike_is_never_lost(length: int, spike_at: int, spike: int,
                                             max_points: int) -> None:
    samples = np.zeros(length, dtype=np.int32)
    samples[spike_at % length] = spike
    indices, values = min_max_decimate(samples, max_points)
    assert spike in values
    assert (spike_at % length) in indices


def test_short_signals_come_back_whole() -> None:
    samples = np.array([3, -1, 4, 1, 5], dtype=np.int32)
    indices, values = min_max_decimate(samples, 5)
    np.testing.assert_array_equal(indices, np.arange(5))
    np.testing.assert_array_equal(values, samples)


def test_a_bucket_gives_its_minimum_and_maximum_in_time_order() -> None:
    samples = np.array([0, 9, -9, 0, 0, -7, 7, 0], dtype=np.int32)
    indices, values = min_max_decimate(samples, 4)  # two buckets of four
    np.testing.assert_array_equal(indices, [1, 2, 5, 6])
    np.testing.assert_array_equal(values, [9, -9, -7, 7])


@pytest.mark.parametrize("max_points", [0, 1, -3])
def test_fewer_than_two_points_is_refused(max_points: int) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        min_max_decimate(np.arange(10), max_points)


def test_two_dimensional_input_is_refused() -> None:
    with pytest.raises(ValueError, match="one-dimensional"):
        min_max_decimate(np.zeros((2, 10), dtype=np.int32), 4)
