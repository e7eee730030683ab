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

import datetime as dt
import os
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO, Literal

import imagecodecs
import numpy as np
import tifffile

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


# --- Pyramidal TIFF files -------------------------------------------------------------

Flavor = Literal["tiff", "svs", "ome"]
Compression = Literal["jpeg", "zlib", "none"]
Target = str | os.PathLike[str] | BinaryIO

SCAN_DATE = dt.datetime(2024, 3, 14, 10, 11, 12)
SCANNER = ("Atrium Labs", "SlideGen 1")
#: Associated images: their size and the pattern window they show (a distinct one each).
ASSOCIATED_SHAPES = {"label": (300, 200), "macro": (600, 240), "thumbnail": (256, 192)}


def associated_pattern(name: str) -> np.ndarray:
    """The pixels written for the associated image ``name``."""
    width, height = ASSOCIATED_SHAPES[name]
    offset = {"label": 7000, "macro": 11000, "thumbnail": 0}[name]
    return pattern(offset, offset, width, height, 1)


def _jpeg_segments(stream: bytes) -> tuple[list[bytes], bytes]:
    """A complete JPEG split into its table segments (DQT, DHT) and the rest as an
    abbreviated stream (SOI, frame and scan, EOI) — what TIFF stores with JPEGTables.
    APPn segments (JFIF, Adobe) are dropped, as scanners do."""
    tables: list[bytes] = []
    rest = [stream[:2]]
    pos = 2
    while True:
        marker = stream[pos + 1]
        if marker == 0xDA:  # SOS: the scan runs to EOI
            rest.append(stream[pos:])
            break
        length = int.from_bytes(stream[pos + 2:pos + 4], "big")
        segment = stream[pos:pos + 2 + length]
        if marker in (0xDB, 0xC4):
            tables.append(segment)
        elif not 0xE0 <= marker <= 0xEF:
            rest.append(segment)
        pos += 2 + length
    return tables, b"".join(rest)


def _numbered_components(tile: bytes) -> bytes:
    """The abbreviated stream with its components numbered 1, 2, 3 instead of libjpeg's
    'R', 'G', 'B' for RGB data: Aperio numbers them, so nothing in the stream says RGB
    and decoders assume YCbCr unless told otherwise."""
    out = bytearray(tile)
    pos = 2
    while True:
        marker, length = out[pos + 1], int.from_bytes(out[pos + 2:pos + 4], "big")
        if marker == 0xC0:  # SOF0: P, Y, X, Nf, then (C, HV, Tq) per component
            for i in range(out[pos + 9]):
                out[pos + 10 + 3 * i] = i + 1
        elif marker == 0xDA:  # SOS: Ns, then (C, Td/Ta) per component
            for i in range(out[pos + 4]):
                out[pos + 5 + 2 * i] = i + 1
            return bytes(out)
        pos += 2 + length


class _JpegTiles:
    """Encodes tiles as TIFF stores them: abbreviated streams sharing one JPEGTables."""

    def __init__(self, rgb: bool, quality: int) -> None:
        self.rgb, self.quality = rgb, quality
        self.tables: bytes | None = None

    def encode(self, pixels: np.ndarray) -> bytes:
        if self.rgb:  # the components coded as R, G, B: Aperio's "JPEG/RGB"
            stream = imagecodecs.jpeg8_encode(pixels, level=self.quality, colorspace="RGB",
                                              outcolorspace="RGB", subsampling="444")
        else:
            stream = imagecodecs.jpeg8_encode(pixels, level=self.quality, subsampling="420")
        segments, tile = _jpeg_segments(bytes(stream))
        if self.rgb:
            tile = _numbered_components(tile)
        tables = b"\xff\xd8" + b"".join(segments) + b"\xff\xd9"
        if self.tables is None:
            self.tables = tables
        assert tables == self.tables, "tiles must share their JPEG tables"
        return tile


def _tiles(image: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """The tiles of ``image`` row by row, edge tiles padded with black (a reader that
    forgets to crop shows black where white or image is expected)."""
    height, width = image.shape[:2]
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            block = np.zeros((tile, tile, 3), dtype=np.uint8)
            part = image[y:y + tile, x:x + tile]
            block[:part.shape[0], :part.shape[1]] = part
            yield block


def _level_kwargs(image: np.ndarray, tile: int, compression: Compression, rgb_jpeg: bool,
                  quality: int) -> dict[str, Any]:
    """tifffile.write arguments for one tiled level."""
    if compression == "jpeg":
        coder = _JpegTiles(rgb_jpeg, quality)
        encoded = [coder.encode(block) for block in _tiles(image, tile)]
        return {"data": iter(encoded), "shape": image.shape, "dtype": np.uint8,
                "tile": (tile, tile), "compression": "jpeg", "jpegtables": coder.tables,
                "photometric": "rgb", "subsampling": (1, 1) if rgb_jpeg else (2, 2),
                # The PhotometricInterpretation tag: RGB for RGB-coded data.
                "compressionargs": {"outcolorspace": "RGB" if rgb_jpeg else "YCBCR"}}
    return {"data": image, "tile": (tile, tile), "photometric": "rgb",
            "compression": "zlib" if compression == "zlib" else None,
            "predictor": compression == "zlib"}


def _svs_description(width: int, height: int, tile: int, mpp: float, magnification: float,
                     level: tuple[int, int] | None = None) -> str:
    head = f"Aperio Image Library v12.0.15\r\n{width}x{height} [0,0 {width}x{height}] " \
           f"({tile}x{tile})"
    if level is not None:
        head += f" -> {level[0]}x{level[1]}"
    return (f"{head} JPEG/RGB Q=70|AppMag = {magnification:g}|StripeWidth = 2040"
            f"|ScanScope ID = SS1234|Filename = Jane Doe 1234|Date = "
            f"{SCAN_DATE:%m/%d/%y}|Time = {SCAN_DATE:%H:%M:%S}|Time Zone = GMT+0100"
            f"|User = b414003d-95c6-48b0-9369-8010ed517ba7|MPP = {mpp:.4f}|Left = 25.691574"
            f"|Top = 23.449873|LineCameraSkew = -0.000424|Filtered = 5")


def _ome_xml(width: int, height: int, mpp: float, magnification: float,
             associated: Sequence[str]) -> str:
    images = []
    for index, (name, (w, h)) in enumerate(
            [("slide", (width, height))] + [(n, ASSOCIATED_SHAPES[n]) for n in associated]):
        size = (f' PhysicalSizeX="{mpp * 1000:g}" PhysicalSizeXUnit="nm"'
                f' PhysicalSizeY="{mpp * 1000:g}" PhysicalSizeYUnit="nm"') if index == 0 else ""
        instrument = ('<InstrumentRef ID="Instrument:0"/>'
                      '<ObjectiveSettings ID="Objective:0"/>') if index == 0 else ""
        images.append(
            f'<Image ID="Image:{index}" Name="{name}">'
            f'<AcquisitionDate>{SCAN_DATE.isoformat()}</AcquisitionDate>{instrument}'
            f'<Pixels ID="Pixels:{index}" DimensionOrder="XYCZT" Type="uint8" SizeX="{w}" '
            f'SizeY="{h}" SizeC="3" SizeZ="1" SizeT="1" Interleaved="true"{size}>'
            f'<Channel ID="Channel:{index}:0" SamplesPerPixel="3"/>'
            f'<TiffData IFD="{index}" PlaneCount="1"/></Pixels></Image>')
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
            'Creator="slidegen">'
            '<Instrument ID="Instrument:0">'
            f'<Microscope Manufacturer="{SCANNER[0]}" Model="{SCANNER[1]}"/>'
            f'<Objective ID="Objective:0" NominalMagnification="{magnification:g}"/>'
            '</Instrument>' + "".join(images) + "</OME>")


def write_pyramid_tiff(
    target: Target,
    width: int,
    height: int,
    *,
    tile: int = 256,
    levels: int | None = None,
    compression: Compression = "jpeg",
    flavor: Flavor = "tiff",
    associated: Sequence[str] = ("label", "macro"),
    mpp: float = 0.25,
    magnification: float = 20,
    quality: int = 90,
    bigtiff: bool = False,
) -> None:
    """A pyramidal TIFF whose level k is exactly ``pattern(0, 0, *level_shape(width,
    height, k), 2**k)``, ``tile`` × ``tile`` tiles, edge tiles padded with black.

    ``levels`` defaults to halving until a level fits in one tile. ``flavor``:

    * ``"tiff"``: levels as top-level pages marked reduced (NewSubfileType 1), as
      libvips writes; X/YResolution in centimetres, Make/Model, DateTime; JPEG
      tiles YCbCr 4:2:0 with shared JPEGTables. Associated images are reduced
      pages whose ImageDescription is their name.
    * ``"svs"``: Aperio's layout — baseline, thumbnail (stripped), the other
      levels, then label and macro (stripped, NewSubfileType 1 and 9, description
      ``label WxH``) — and its ImageDescription (AppMag, MPP, Date/Time, and a
      ``Filename`` holding a patient's name that must never come out). JPEG tiles
      are coded as RGB (photometric RGB, no Adobe marker) as Aperio does.
    * ``"ome"``: OME-XML (PhysicalSize in nm, NominalMagnification, Microscope
      Model, AcquisitionDate), the pyramid in SubIFDs, associated images as OME
      images named after them.

    ``compression`` "zlib" (with the horizontal predictor) and "none" are lossless.
    ``target`` is a path or a writable binary file.
    """
    if levels is None:
        levels = 1
        while max(level_shape(width, height, levels - 1)) > tile:
            levels += 1
    images = [pattern(0, 0, *level_shape(width, height, k), 2 ** k) for k in range(levels)]
    rgb_jpeg = flavor == "svs"

    def level(k: int, **extra: Any) -> dict[str, Any]:
        return {**_level_kwargs(images[k], tile, compression, rgb_jpeg, quality),
                "metadata": None, **extra}

    def strip(name: str, **extra: Any) -> dict[str, Any]:
        return {"data": associated_pattern(name), "photometric": "rgb", "metadata": None,
                "rowsperstrip": 64, "compression": "zlib", **extra}

    resolution = (10_000 / mpp, 10_000 / mpp)
    with tifffile.TiffWriter(target, bigtiff=bigtiff) as tif:
        if flavor == "svs":
            tif.write(**level(0, description=_svs_description(width, height, tile, mpp,
                                                                magnification),
                              resolution=resolution, resolutionunit="CENTIMETER"))
            if "thumbnail" in associated:
                tif.write(**strip("thumbnail", description=_svs_description(
                    width, height, tile, mpp, magnification, ASSOCIATED_SHAPES["thumbnail"])))
            for k in range(1, levels):
                tif.write(**level(k, description=_svs_description(
                    width, height, tile, mpp, magnification, level_shape(width, height, k))))
            for name, subfiletype in (("label", 1), ("macro", 9)):
                if name in associated:
                    w, h = ASSOCIATED_SHAPES[name]
                    tif.write(**strip(name, subfiletype=subfiletype,
                                      description=f"Aperio Image Library v12.0.15\r\n"
                                                  f"{name} {w}x{h}"))
        elif flavor == "ome":
            tif.write(**level(0, subifds=levels - 1,
                              description=_ome_xml(width, height, mpp, magnification,
                                                   associated),
                              resolution=resolution, resolutionunit="CENTIMETER"))
            for k in range(1, levels):
                tif.write(**level(k, subfiletype=1))
            for name in associated:
                tif.write(**strip(name))
        else:
            tif.write(**level(0, resolution=resolution, resolutionunit="CENTIMETER",
                              datetime=SCAN_DATE,
                              extratags=[(271, "s", 0, SCANNER[0], True),
                                         (272, "s", 0, SCANNER[1], True)]))
            for k in range(1, levels):
                tif.write(**level(k, subfiletype=1))
            for name in associated:
                tif.write(**strip(name, subfiletype=1, description=name))


def write_big_jpeg_pyramid(
    target: Target, width: int = 50_000, height: int = 50_000, *, tile: int = 256,
    distinct_tiles: int = 16, quality: int = 80,
) -> None:
    """A large JPEG-tiled pyramidal TIFF (BigTIFF, libvips-like layout: levels as
    reduced pages, YCbCr tiles sharing JPEGTables) written in seconds and little
    memory: ``distinct_tiles`` tiles of the pattern are encoded once and repeated
    over every level (so pixels do not follow :func:`pattern`; for benchmarks).
    A 50,000² slide is about ``40,000 × 1.33`` tiles, ~0.6-1.5 GB at quality 80.
    """
    coder = _JpegTiles(rgb=False, quality=quality)
    rng = np.random.default_rng(0)
    encoded = []
    for index in range(distinct_tiles):
        pixels = pattern(index * tile, index * tile * 3, tile, tile, 1).astype(np.int16)
        # Texture, so tiles weigh what tissue tiles weigh (~10-30 kB) rather than 2 kB.
        pixels += rng.integers(-24, 24, pixels.shape, dtype=np.int16)
        encoded.append(coder.encode(np.clip(pixels, 0, 255).astype(np.uint8)))
    with tifffile.TiffWriter(target, bigtiff=True) as tif:
        k = 0
        while True:
            w, h = level_shape(width, height, k)
            count = (-(-w // tile)) * (-(-h // tile))
            tif.write(data=(encoded[i % distinct_tiles] for i in range(count)),
                      shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), compression="jpeg",
                      jpegtables=coder.tables, photometric="rgb", subsampling=(2, 2),
                      subfiletype=1 if k else 0, metadata=None)
            if max(w, h) <= tile:
                break
            k += 1
