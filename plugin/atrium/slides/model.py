"""What every slide reader gives, whatever the file: its levels, its metadata, its
tiles, regions and associated images.

Readers: :mod:`atrium.slides.tiff` (pyramidal TIFF, Aperio SVS, OME-TIFF, and
Hamamatsu NDPI through :mod:`atrium.slides.ndpi`, read with ranged reads of object
storage) and :mod:`atrium.slides.dicom_wsi` (DICOM VL Whole Slide Microscopy
series, tiles from the frames Orthanc stores). The API
(:mod:`atrium.api.slides`) only ever sees a :class:`SlideReader`.

Coordinates: level 0 is full resolution; level k is the k-th pyramid level of the
source, ``downsample`` times smaller. Tiles are ``tile_size`` squares of the
slide's grid at each level, counted from the top-left; edge tiles are cropped to
the image, never padded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

__all__ = ["ImageFormat", "Level", "SlideInfo", "SlideReader", "tile_grid"]

ImageFormat = Literal["jpeg", "png"]


@dataclass(frozen=True)
class Level:
    width: int
    height: int
    downsample: float  # level 0 width / this level's width


@dataclass(frozen=True)
class SlideInfo:
    """What is read from the file; the ``slides`` row is made from it."""

    file_format: str  # "SVS", "OME-TIFF", "TIFF", "DICOM", ...
    levels: tuple[Level, ...]
    tile_size: int
    mpp_x: float | None = None
    mpp_y: float | None = None
    magnification: str | None = None
    scanner_model: str | None = None
    scan_date: dt.datetime | None = None
    associated: tuple[str, ...] = ()  # "label", "macro", "thumbnail"
    lossless: bool = False  # every level stored without loss: PNG tiles are exact
    properties: dict[str, Any] = field(default_factory=dict)  # JSON-able, no PHI

    @property
    def width(self) -> int:
        return self.levels[0].width

    @property
    def height(self) -> int:
        return self.levels[0].height


def tile_grid(level: Level, tile_size: int) -> tuple[int, int]:
    """(columns, rows) of the tile grid of ``level``."""
    return -(-level.width // tile_size), -(-level.height // tile_size)


class SlideReader(Protocol):
    """An open slide. Safe to share between threads.

    Errors are :mod:`atrium.errors` values: :class:`~atrium.errors.NotFound` for a
    level, tile, region or associated image that does not exist;
    :class:`~atrium.errors.BadRequest` for a region past the size cap.
    """

    info: SlideInfo

    def tile(self, level: int, col: int, row: int, image_format: ImageFormat) -> bytes:
        """The encoded tile. A JPEG tile the source stores as it is sent unchanged
        (tables merged); PNG of a lossless source equals the source pixels."""

    def region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """uint8 RGB array (height, width, 3) of the level's pixels from (x, y); the
        part outside the image is white."""

    def associated(self, name: str) -> np.ndarray:
        """uint8 RGB array of an associated image (label, macro, thumbnail)."""

    def close(self) -> None: ...
