"""Whole-slide test images with a known pattern, so every tile can be checked
pixel by pixel against what it should show.

``pattern(x0, y0, width, height, downsample)`` is the RGB image of the slide's
full-resolution plane seen at ``downsample`` (1 = full resolution), for the
rectangle whose top-left corner is (x0, y0) *in that level's pixels*. A level of
a pyramid is exactly ``pattern(0, 0, w, h, 2**k)``: no resampling is involved, so
a lossless tile equals the pattern exactly and a lossy one is close to it.

The pattern varies smoothly enough for JPEG to keep it recognisable (gradients),
and carries a coarse checkerboard so a tile taken from the wrong place or level
is caught.
"""

from __future__ import annotations

import numpy as np

CHECKER = 512  # full-resolution pixels per checkerboard square


def pattern(x0: int, y0: int, width: int, height: int, downsample: int = 1) -> np.ndarray:
    """uint8 array of shape (height, width, 3)."""
    ys = (np.arange(y0, y0 + height, dtype=np.int64) * downsample)[:, None]
    xs = (np.arange(x0, x0 + width, dtype=np.int64) * downsample)[None, :]
    red = (xs // 64) % 256 + 0 * ys
    green = (ys // 64) % 256 + 0 * xs
    checker = ((xs // CHECKER + ys // CHECKER) % 2) * 160 + 48
    image = np.stack([red, green, checker + 0 * (xs + ys)], axis=-1)
    return image.astype(np.uint8)


def level_shape(width: int, height: int, level: int) -> tuple[int, int]:
    """(width, height) of pyramid level ``level`` of a ``width`` × ``height`` slide
    whose levels halve (rounding up)."""
    factor = 2 ** level
    return -(-width // factor), -(-height // factor)
