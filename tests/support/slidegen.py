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
import io
import os
import struct
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO, Literal

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

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


# --- Hamamatsu NDPI files -------------------------------------------------------------

NDPI_MODEL = ("Hamamatsu", "C13220-01")
NDPI_SERIAL = "SN-4711"
NDPI_REFERENCE = "Jane Doe 1234"  # tag 65427: free text, often a patient's name
NDPI_PROPERTY_MAP = ("NDP.S/N=SN-4711\r\nPatient=Jane Doe\r\nLamp.Intensity=12.5\r\n"
                     "Focus.Points=9\r\nComment=called Jane on 2024-03-14\r\n")
_NDPI_TYPES = {"B": 1, "s": 2, "H": 3, "I": 4, "ii": 10, "II": 5, "i": 9, "f": 11}


def _jpeg_intervals(stream: bytes) -> tuple[int, list[int]]:
    """(length of the header through SOS, start of each restart interval) of a JPEG:
    what NDPI's McuStarts lists. In entropy-coded data 0xFF is followed by a stuffed
    0x00, so every 0xFF 0xD0-0xD7 pair is a restart marker."""
    pos = 2
    while stream[pos + 1] != 0xDA:
        pos += 2 + int.from_bytes(stream[pos + 2:pos + 4], "big")
    header = pos + 2 + int.from_bytes(stream[pos + 2:pos + 4], "big")
    starts = [header]
    index = stream.find(b"\xff", header)
    while index != -1:
        if 0xD0 <= stream[index + 1] <= 0xD7:
            starts.append(index + 2)
        index = stream.find(b"\xff", index + 2)
    return header, starts


def ndpi_jpeg(pixels: np.ndarray, restart_blocks: int | None, *, subsampling: int = 2,
              quality: int = 90) -> tuple[bytes, list[int] | None]:
    """A level's single JPEG strip as NDPI stores it, and its McuStarts.

    ``restart_blocks``: MCUs per restart interval (must divide the MCUs of a row, as
    NDPI's do), 0 for one interval per MCU row, None for no restart markers (the
    macro). ``subsampling``: Pillow's (0 = 4:4:4, MCU 8 × 8; 2 = 4:2:0, MCU 16 × 16).
    """
    options: dict[str, Any] = {}
    if restart_blocks == 0:
        options["restart_marker_rows"] = 1
    elif restart_blocks is not None:
        options["restart_marker_blocks"] = restart_blocks
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality, subsampling=subsampling,
                                 **options)
    stream = buffer.getvalue()
    if restart_blocks is None:
        return stream, None
    header, starts = _jpeg_intervals(stream)
    if b"\xff\xdd" not in stream[:header]:
        raise RuntimeError("this Pillow wrote no restart markers: the restart_marker_blocks "
                           "and restart_marker_rows JPEG options need a recent Pillow")
    return stream, starts


def write_ndpi(
    target: str | os.PathLike[str] | BinaryIO,
    width: int,
    height: int,
    *,
    levels: int = 3,
    restart_blocks: int = 8,
    subsampling: int = 2,
    quality: int = 90,
    mpp: float = 0.25,
    magnification: float = 20,
    macro: bool = True,
    extras: bool = True,
    data_offset: int = 0,
) -> None:
    """A Hamamatsu NDPI file whose level k is ``pattern(0, 0, *level_shape(width,
    height, k), 2**k)``, laid out as NDPI does (there is no NDPI writer to borrow):

    * the header's first-directory offset and each next-directory offset on 8 bytes,
      and after each directory 4 bytes per entry: the high half of its value or
      offset (nonzero only past 4 GiB); ASCII values always at an offset;
    * each image one JPEG strip; levels with restart markers every
      ``restart_blocks`` MCUs where that divides a row's MCUs, else one interval
      per MCU row, and McuStarts (65426, with 65432 high bytes) listing them;
    * 65420 format, 65421 source lens (``magnification / 2**k``; -1 for the macro,
      a plain JPEG of ``associated_pattern("macro")``), 65422/65423 offsets,
      Make/Model, DateTime, X/YResolution in centimetres, 65442 serial, and the
      free text a reader must drop: 65427 reference, 65449 property map.

    ``extras`` adds a tissue map (lens -2) and a second focal plane (65424 ≠ 0) of
    another size, which a reader must not take for levels. ``data_offset`` starts
    everything after the header there (a sparse file past 4 GiB exercises the high
    halves; ``target`` must then be a path or a seekable real file).
    """
    pages: list[dict[str, Any]] = []
    for k in range(levels):
        w, h = level_shape(width, height, k)
        mcu = 16 if subsampling == 2 else 8
        blocks = restart_blocks if (-(-w // mcu)) % restart_blocks == 0 else 0
        stream, starts = ndpi_jpeg(pattern(0, 0, w, h, 2 ** k), blocks,
                                   subsampling=subsampling, quality=quality)
        pages.append({"data": stream, "width": w, "height": h, "starts": starts,
                      "lens": magnification / 2 ** k, "z": 0, "mpp": mpp * 2 ** k})
    if extras:
        w, h = width // 3, height // 3
        stream, starts = ndpi_jpeg(np.full((h, w, 3), 90, np.uint8), 0, subsampling=subsampling)
        pages.append({"data": stream, "width": w, "height": h, "starts": starts,
                      "lens": magnification, "z": 1200, "mpp": mpp * 3})
    if macro:
        stream, _ = ndpi_jpeg(associated_pattern("macro"), None)
        w, h = ASSOCIATED_SHAPES["macro"]
        pages.append({"data": stream, "width": w, "height": h, "starts": None, "lens": -1.0,
                      "z": 0, "mpp": 20.0})
    if extras:
        stream, _ = ndpi_jpeg(np.full((32, 64), 200, np.uint8), None)
        pages.append({"data": stream, "width": 64, "height": 32, "starts": None, "lens": -2.0,
                      "z": 0, "mpp": 50.0})

    base = max(12, data_offset)
    body = bytearray()

    def here() -> int:
        return base + len(body)

    for page in pages:
        page["offset"] = here()
        body.extend(page["data"])
        if len(body) % 2:
            body.append(0)
    first_ifd = 0
    previous_next: int | None = None
    for page in pages:
        tags: list[tuple[int, str, Sequence[Any] | str]] = [
            (256, "I", [page["width"]]), (257, "I", [page["height"]]),
            (258, "H", [8, 8, 8]), (259, "H", [7]), (262, "H", [6]),
            (271, "s", NDPI_MODEL[0]), (272, "s", NDPI_MODEL[1]),
            (273, "I", [page["offset"]]), (277, "H", [3]), (278, "I", [page["height"]]),
            (279, "I", [len(page["data"])]),
            (282, "II", [round(10_000_000 / page["mpp"]), 1000]),
            (283, "II", [round(10_000_000 / page["mpp"]), 1000]),
            (296, "H", [3]), (305, "s", "NDP.scan 3.4.0"),
            (306, "s", SCAN_DATE.strftime("%Y:%m:%d %H:%M:%S")),
            (65420, "I", [1]), (65421, "f", [page["lens"]]), (65422, "i", [-1_234_567]),
            (65423, "i", [7_654_321]), (65424, "i", [page["z"]]),
            (65427, "s", NDPI_REFERENCE), (65442, "s", NDPI_SERIAL),
            (65449, "s", NDPI_PROPERTY_MAP),
        ]
        if page["starts"] is not None:
            tags += [(65426, "I", page["starts"]), (65432, "I", [0] * len(page["starts"]))]
        tags.sort(key=lambda tag: tag[0])
        entries, highs = bytearray(), bytearray()
        for code, kind, values in tags:
            if kind == "s":
                data = str(values).encode("latin-1") + b"\x00"
                count = len(data)
            elif kind == "I" and len(values) == 1 and values[0] > 0xFFFFFFFF:
                # A strip past 4 GiB: the low half in the entry, the high half after it.
                data, count = struct.pack("<Q", values[0]), 1
            else:
                data = struct.pack(f"<{len(values)}{kind[0]}", *values)
                count = len(values) // len(kind)  # a RATIONAL is two numbers
            if kind == "I" and count == 1 and len(data) == 8:
                field = data
            elif len(data) <= 4 and kind != "s":
                field = data.ljust(8, b"\x00")
            else:
                field = struct.pack("<Q", here())
                body.extend(data)
                if len(body) % 2:
                    body.append(0)
            entries += struct.pack("<HHI", code, _NDPI_TYPES[kind], count) + field[:4]
            highs += field[4:]
        ifd = here()
        if previous_next is None:
            first_ifd = ifd
        else:
            struct.pack_into("<Q", body, previous_next - base, ifd)
        body.extend(struct.pack("<H", len(tags)) + entries)
        previous_next = here()
        body.extend(b"\x00" * 8 + highs)
    header = b"II*\x00" + struct.pack("<Q", first_ifd)
    if isinstance(target, str | os.PathLike):
        with open(target, "wb") as file:
            _write_at(file, header, base, body)
    else:
        _write_at(target, header, base, body)


def _write_at(file: BinaryIO, header: bytes, base: int, body: bytes | bytearray) -> None:
    file.write(header)
    file.seek(base)  # past the end of a real file: a hole, not written bytes
    file.write(body)
