"""Deep Zoom (the tiling OpenSeadragon reads) over any slide reader.

A Deep Zoom image of W × H pixels has ``ceil(log2(max(W, H))) + 1`` levels; the
last is full resolution and each one before it halves the previous, rounding up,
down to 1 × 1. Tiles are the slide's ``tile_size`` squares without overlap, edge
tiles cropped.

A Deep Zoom level that *is* a stored level (a pyramid that halves, as most do) is
served by :meth:`SlideReader.tile`, so its JPEG tiles pass through unchanged. Any
other level (a pyramid that quarters, as Aperio's does, or none at all) is made
from the nearest stored level at least as detailed, by resampling a region.
"""

from __future__ import annotations

import math
from xml.sax.saxutils import quoteattr

from atrium.errors import NotFound
from atrium.slides.model import ImageFormat, SlideInfo, SlideReader
from atrium.slides.tiled import check_region_size, encode_image, resized

__all__ = ["DZI_NAMESPACE", "dzi_descriptor", "dzi_level_count", "dzi_level_size", "dzi_tile"]

DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"
# A stored level counts as at least as detailed as a Deep Zoom level when its
# downsample is at most 1 % coarser: pyramids round level sizes, so a "2x" level
# of an odd-sized slide has a downsample of 2.00004.
_SLACK = 1.01


def dzi_level_count(width: int, height: int) -> int:
    """``ceil(log2(max(width, height))) + 1``; 1 for a 1 × 1 image."""
    return (max(width, height) - 1).bit_length() + 1


def dzi_level_size(width: int, height: int, dzi_level: int) -> tuple[int, int]:
    """(width, height) of Deep Zoom level ``dzi_level``: full resolution divided by
    ``2 ** (max_level - dzi_level)``, rounded up."""
    factor = 2 ** (dzi_level_count(width, height) - 1 - dzi_level)
    return -(-width // factor), -(-height // factor)


def dzi_descriptor(info: SlideInfo, image_format: ImageFormat = "jpeg") -> str:
    """The ``.dzi`` descriptor OpenSeadragon opens."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image TileSize="{info.tile_size}" Overlap="0" Format={quoteattr(image_format)}'
            f' xmlns="{DZI_NAMESPACE}"><Size Width="{info.width}" Height="{info.height}"/>'
            f'</Image>\n')


def dzi_tile(reader: SlideReader, dzi_level: int, col: int, row: int,
             image_format: ImageFormat) -> bytes:
    """Tile (col, row) of Deep Zoom level ``dzi_level``, encoded.

    Raises
    ------
    NotFound
        For a level, column or row outside the Deep Zoom image.
    BadRequest
        When the tile would need a region past the size cap: a Deep Zoom level far
        coarser than the slide's lowest stored level (a slide without a pyramid).
    """
    info = reader.info
    width, height, size = info.width, info.height, info.tile_size
    count = dzi_level_count(width, height)
    if not 0 <= dzi_level < count:
        raise NotFound(f"Deep Zoom level {dzi_level} does not exist; levels are 0 to "
                       f"{count - 1}")
    factor = 2 ** (count - 1 - dzi_level)
    level_width, level_height = dzi_level_size(width, height, dzi_level)
    columns, rows = -(-level_width // size), -(-level_height // size)
    if not (0 <= col < columns and 0 <= row < rows):
        raise NotFound(f"tile {col},{row} does not exist at Deep Zoom level {dzi_level}; its "
                       f"grid is {columns} × {rows}")
    x, y = col * size, row * size
    tile_width, tile_height = min(size, level_width - x), min(size, level_height - y)

    for index, level in enumerate(info.levels):
        # A stored level rounded the other way is still this Deep Zoom level.
        if abs(level.width - level_width) <= 1 and abs(level.height - level_height) <= 1:
            same_edges = (level.width, level.height) == (level_width, level_height)
            if same_edges or (x + size <= level.width and y + size <= level.height):
                return reader.tile(index, col, row, image_format)
            return encode_image(reader.region(index, x, y, tile_width, tile_height),
                                image_format)

    index = max((i for i, level in enumerate(info.levels) if level.downsample <= factor * _SLACK),
                key=lambda i: info.levels[i].downsample, default=0)
    level = info.levels[index]
    scale_x, scale_y = level.width / width, level.height / height
    # The tile's rectangle in full-resolution pixels, then in the stored level's.
    x0, x1 = x * factor, min((x + tile_width) * factor, width)
    y0, y1 = y * factor, min((y + tile_height) * factor, height)
    rx0, ry0 = math.floor(x0 * scale_x), math.floor(y0 * scale_y)
    ratio = factor / level.downsample
    if abs(ratio - round(ratio)) < 0.01:
        # Read exactly n × n level pixels per tile pixel, so the reduction is a
        # cheap block average; rounding moves the rectangle by under one pixel.
        region_width, region_height = tile_width * round(ratio), tile_height * round(ratio)
    else:
        region_width = max(math.ceil(x1 * scale_x) - rx0, 1)
        region_height = max(math.ceil(y1 * scale_y) - ry0, 1)
    check_region_size(region_width, region_height)
    pixels = reader.region(index, rx0, ry0, region_width, region_height)
    return encode_image(resized(pixels, tile_width, tile_height), image_format)
