"""How long a stored window is: about 24,000 samples of all channels, 2 to 10 s."""

from __future__ import annotations

import pytest

from atrium.signals.store import _window_frames


@pytest.mark.parametrize(("frame_rate", "samples_per_frame", "frames", "why"), [
    (500.0, [1] * 12, 2_000, "12-lead Holter: 6,000 samples/s → 4 s"),
    (360.0, [1, 1], 3_600, "MIT-BIH: 720 samples/s would be 33 s → the 10 s ceiling"),
    (1000.0, [1] * 15, 2_000, "PTB: 15,000 samples/s would be 1.6 s → the 2 s floor"),
    (1.0, [256] * 20, 4, "EDF, 1 s data records of 256 samples: 5,120/s → 4 records"),
    (0.5, [1], 5, "a slow channel: 10 s of frames"),
    (250.0, [], 2_500, "no channels: the ceiling"),
])
def test_a_window_holds_about_24000_samples_between_2_and_10_seconds(
        frame_rate: float, samples_per_frame: list[int], frames: int, why: str) -> None:
    assert _window_frames(frame_rate, samples_per_frame) == frames, why
