"""Deep Zoom over slide readers: the level arithmetic, the descriptor, tiles that
pass through where a stored level coincides and are resampled where none does."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import imagecodecs
import numpy as np
import pytest

from atrium.errors import BadRequest, NotFound
from atrium.slides.deepzoom import (
    DZI_NAMESPACE,
    dzi_descriptor,
    dzi_level_count,
    dzi_level_size,
    dzi_tile,
)
from atrium.slides.model import Level, SlideInfo
from atrium.slides.source import MemorySource
from atrium.slides.tiff import open_tiff_slide
from atrium.slides.tiled import StoredLevel, TiledSlideReader, TiledSource, resized
from tests.support.slidegen import pattern, write_pyramid_tiff

WIDTH, HEIGHT, TILE = 1000, 700, 256


def _slide(compression: str = "zlib", levels: int | None = None,
           width: int = WIDTH, height: int = HEIGHT) -> TiledSlideReader:
    buffer = io.BytesIO()
    write_pyramid_tiff(buffer, width, height, compression=compression,  # type: ignore[arg-type]
                       levels=levels, associated=())
    return open_tiff_slide(MemorySource(buffer.getvalue()))


class _EveryOtherLevel(TiledSource):
    """A pyramid that quarters (as Aperio's does): levels 0 and 2 of another source."""

    def __init__(self, inner: TiledSource) -> None:
        self.inner = inner
        self.stored_levels = (inner.stored_levels[0], inner.stored_levels[2])

    def stored_tile(self, level: int, col: int, row: int) -> bytes | None:
        return self.inner.stored_tile(2 * level, col, row)

    def decode(self, level: int, data: bytes) -> np.ndarray:
        return self.inner.decode(2 * level, data)


def _quartering() -> TiledSlideReader:
    inner = _slide().source
    levels = tuple(Level(lv.width, lv.height, lv.downsample)
                   for lv in (inner.stored_levels[0], inner.stored_levels[2]))
    return TiledSlideReader(_EveryOtherLevel(inner), SlideInfo("TEST", levels, TILE))


def png(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG")
    return np.asarray(imagecodecs.png_decode(data))


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize(("width", "height", "count"), [
    (1, 1, 1), (2, 1, 2), (3, 3, 3), (256, 256, 9), (257, 10, 10), (1000, 700, 11),
    (50_000, 50_000, 17),
])
def test_the_level_count_is_ceil_log2_of_the_longer_side_plus_one(
        width: int, height: int, count: int) -> None:
    assert dzi_level_count(width, height) == count
    assert dzi_level_size(width, height, count - 1) == (width, height)
    assert dzi_level_size(width, height, 0) == (1, 1)


def test_level_sizes_halve_rounding_up() -> None:
    assert [dzi_level_size(1000, 700, level) for level in (10, 9, 8, 1)] == [
        (1000, 700), (500, 350), (250, 175), (2, 2)]


def test_the_descriptor_is_deep_zoom_xml() -> None:
    info = _slide().info
    root = ET.fromstring(dzi_descriptor(info))  # noqa: S314 - our own output
    assert root.tag == f"{{{DZI_NAMESPACE}}}Image"
    assert root.attrib == {"TileSize": "256", "Overlap": "0", "Format": "jpeg"}
    size = root.find(f"{{{DZI_NAMESPACE}}}Size")
    assert size is not None and size.attrib == {"Width": "1000", "Height": "700"}
    assert ET.fromstring(dzi_descriptor(info, "png")).get("Format") == "png"  # noqa: S314


def test_levels_that_are_stored_levels_are_served_by_the_reader() -> None:
    reader = _slide("jpeg")
    top = dzi_level_count(WIDTH, HEIGHT) - 1
    for k in range(3):
        level = reader.info.levels[k]
        for row in range(-(-level.height // TILE)):
            for col in range(-(-level.width // TILE)):
                assert dzi_tile(reader, top - k, col, row, "jpeg") == \
                    reader.tile(k, col, row, "jpeg")


@pytest.mark.parametrize("reader_kind", ["halving", "quartering"])
def test_every_deep_zoom_tile_shows_the_pattern_at_its_scale(reader_kind: str) -> None:
    reader = _slide() if reader_kind == "halving" else _quartering()
    count = dzi_level_count(WIDTH, HEIGHT)
    for dzi_level in range(count):
        factor = 2 ** (count - 1 - dzi_level)
        width, height = dzi_level_size(WIDTH, HEIGHT, dzi_level)
        # The expected picture: the full-resolution pattern resampled the same way.
        full = pattern(0, 0, WIDTH, HEIGHT)
        expected = full if factor == 1 else resized(full, width, height)
        for row in range(-(-height // TILE)):
            for col in range(-(-width // TILE)):
                tile = png(dzi_tile(reader, dzi_level, col, row, "png"))
                w, h = min(TILE, width - col * TILE), min(TILE, height - row * TILE)
                assert tile.shape == (h, w, 3), (dzi_level, col, row)
                part = expected[row * TILE:row * TILE + h, col * TILE:col * TILE + w]
                if factor <= 4 and reader_kind == "halving":
                    # A stored level: exactly the pattern at that level.
                    assert np.array_equal(tile, pattern(col * TILE, row * TILE, w, h, factor))
                elif min(w, h) >= 8:
                    # Resampled: differs at the pattern's sharp checker edges only.
                    assert mean_error(tile, part) < 8, (dzi_level, col, row)


def test_a_level_between_quartered_levels_is_made_from_the_finer_one() -> None:
    reader = _quartering()
    top = dzi_level_count(WIDTH, HEIGHT) - 1
    tile = png(dzi_tile(reader, top - 1, 0, 0, "png"))
    assert tile.shape == (256, 256, 3)
    assert mean_error(tile, pattern(0, 0, 256, 256, 2)) < 3


@pytest.mark.parametrize(("level", "col", "row"), [
    (-1, 0, 0), (11, 0, 0), (10, 4, 0), (10, 0, 3), (0, 1, 0), (0, 0, 1), (9, -1, 0),
])
def test_a_tile_outside_the_deep_zoom_image_is_not_found(level: int, col: int,
                                                         row: int) -> None:
    with pytest.raises(NotFound):
        dzi_tile(_slide(), level, col, row, "jpeg")


def test_a_coarse_level_of_a_slide_without_pyramid_past_the_cap_is_a_bad_request() -> None:
    class Flat(TiledSource):
        stored_levels = (StoredLevel(40_000, 300, 256, 256, 1.0),)

        def stored_tile(self, level: int, col: int, row: int) -> bytes | None:
            return None

        def decode(self, level: int, data: bytes) -> np.ndarray:
            raise AssertionError("nothing is stored")

    reader = TiledSlideReader(Flat(), SlideInfo("TEST", (Level(40_000, 300, 1.0),), 256))
    assert png(dzi_tile(reader, 15, 0, 0, "png")).shape == (150, 256, 3)  # factor 2
    with pytest.raises(BadRequest, match="at most 16384 pixels"):
        dzi_tile(reader, 0, 0, 0, "png")
