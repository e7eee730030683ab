"""Pyramidal TIFF, BigTIFF, Aperio SVS and OME-TIFF slides, read by ranges.

:func:`open_tiff_slide` parses the file's structure with tifffile through
:class:`~atrium.slides.source.SourceFile` (a few ranged reads of the headers),
keeps what tiles need — per level, the tile offsets and byte counts as numpy
arrays, the codec, the JPEG tables — and lets tifffile go. Tiles are then one
ranged read each, JPEG tiles sent as they are stored (:mod:`atrium.slides.tiled`).

What is accepted: tiled 8-bit RGB or greyscale levels, JPEG, deflate, LZW, zstd
or uncompressed. A small stripped image (at most :data:`MAX_STRIPPED_SIDE` on a
side) is accepted as a one-level slide whose strips are its stored tiles; a larger
one is refused — it would have to be decoded whole for every tile. Hamamatsu NDPI
is recognised here and read by :mod:`atrium.slides.ndpi`. Other vendor formats
(Philips, Leica SCN, Ventana BIF, …), JPEG 2000 and multi-channel fluorescence
are refused with :class:`~atrium.errors.UnsupportedMediaType`.

Every failure is an :mod:`atrium.errors` value: not a TIFF → 415; a structure
pointing past the end of the file, or a file tifffile cannot parse → 400 saying
the file is damaged or truncated; a header past a limit (the decompression-bomb
guards below) → 400 naming the limit.

Metadata keeps no free text: ImageDescription (where Aperio writes a file name,
often a patient's) is parsed for known numeric keys only.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import xml.etree.ElementTree as ET  # noqa: S405 - expat >= 2.4 refuses entity bombs
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
import tifffile
from tifffile.tifffile import jpeg_shape

from atrium.errors import ApiError, BadRequest, UnsupportedMediaType
from atrium.slides.model import Level, SlideInfo
from atrium.slides.source import ByteSource, SourceFile, truncated
from atrium.slides.tiled import (
    DecodedTileCache,
    StoredLevel,
    TiledSlideReader,
    TiledSource,
    assemble,
    standalone_jpeg,
)

log = logging.getLogger(__name__)

__all__ = ["MAX_LEVEL0_PIXELS", "MAX_SIDE", "MAX_STRIPPED_SIDE", "MAX_TILES", "MAX_TILE_BYTES",
           "MAX_TILE_SIDE", "SUPPORTED_FORMATS", "TiffSource", "open_tiff_slide"]

SUPPORTED_FORMATS = ("tiled pyramidal TIFF or BigTIFF, Aperio SVS and OME-TIFF "
                     "(8-bit RGB or greyscale; JPEG, deflate, LZW, zstd or uncompressed), "
                     "and Hamamatsu NDPI (JPEG)")
MAX_SIDE = 1_000_000
MAX_LEVEL0_PIXELS = 20_000_000_000
MAX_TILE_SIDE = 4096
MAX_TILE_BYTES = 32 * 1024 * 1024
MAX_TILES = 2_000_000  # tifffile holds the whole tile index while parsing
MAX_STRIPPED_SIDE = 8192
_MAX_PAGES = 256
_MAX_ASSOCIATED_PIXELS = 64 * 1024 * 1024
_ASSOCIATED = ("label", "macro", "thumbnail")
_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

_JPEG = 7
# Codecs by TIFF compression code. Each gets the size the tile must decode to, so
# a crafted stream cannot inflate past it (the decompression-bomb guard).
_DECOMPRESS: dict[int, Callable[[bytes, int], Any]] = {
    1: lambda data, size: data,
    5: lambda data, size: imagecodecs.lzw_decode(data, out=size),
    8: lambda data, size: imagecodecs.zlib_decode(data, out=size),
    32946: lambda data, size: imagecodecs.zlib_decode(data, out=size),
    50000: lambda data, size: imagecodecs.zstd_decode(data, out=size),
}
_COMPRESSION_NAMES = {1: "none", 5: "lzw", _JPEG: "jpeg", 8: "deflate", 32946: "deflate",
                      50000: "zstd"}
_PHOTOMETRIC_NAMES = {1: "minisblack", 2: "rgb", 6: "ycbcr"}
# Vendor formats tifffile recognises that are not pyramids of tiles we can serve.
_REFUSED = {"philips": "Philips TIFF", "scn": "Leica SCN",
            "bif": "Ventana BIF", "qpi": "PerkinElmer QPI", "indica": "Indica Labs"}
# Aperio ImageDescription keys kept as numbers; the rest (Filename, User, …) is dropped.
_APERIO_NUMBERS = ("AppMag", "MPP", "StripeWidth", "Left", "Top", "LineCameraSkew",
                   "LineAreaXOffset", "LineAreaYOffset", "Focus Offset", "Exposure Time",
                   "Exposure Scale", "Gamma", "OriginalWidth", "OriginalHeight")
_OME_UNITS_UM = {"pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3,
                 "cm": 1e4, "m": 1e6}


def unsupported(what: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(f"{what}; the slide formats supported are {SUPPORTED_FORMATS}")


@dataclass(frozen=True)
class _Layout:
    """Where a level's (or associated image's) stored tiles are and how they are coded."""

    level: StoredLevel
    offsets: np.ndarray  # int64, one per stored tile, row by row
    counts: np.ndarray  # int64 byte counts; 0 = tile not stored
    compression: int
    predictor: int
    samples: int
    jpeg_tables: bytes | None
    rgb_jpeg: bool  # JPEG data coded as R, G, B: declare it (Adobe marker)


class TiffSource(TiledSource):
    """The stored tiles of a parsed TIFF: layouts ``[0, levels)`` are the pyramid,
    the others the associated images named in ``associated``."""

    def __init__(self, source: ByteSource, layouts: Sequence[_Layout], levels: int,
                 associated: dict[str, int]) -> None:
        self.source = source
        self._layouts = tuple(layouts)
        self.stored_levels = tuple(layout.level for layout in self._layouts[:levels])
        self._associated = associated

    def close(self) -> None:
        self.source.close()

    def stored_tile(self, level: int, col: int, row: int) -> bytes | None:
        layout = self._layouts[level]
        index = row * layout.level.grid[0] + col
        offset, count = int(layout.offsets[index]), int(layout.counts[index])
        if count == 0 or offset == 0:
            return None
        data = self.source.read(offset, count)
        if layout.compression == _JPEG:
            return standalone_jpeg(data, layout.jpeg_tables, rgb=layout.rgb_jpeg)
        return data

    def decode(self, level: int, data: bytes) -> np.ndarray:
        layout = self._layouts[level]
        width, height = layout.level.tile_width, layout.level.tile_height
        if layout.compression == _JPEG:
            _, rows, columns, samples = jpeg_shape(data)
            if columns != width or rows > height or samples != layout.samples:
                raise ValueError(f"JPEG frame is {columns}x{rows}x{samples}, not the tile's")
            pixels = imagecodecs.jpeg8_decode(data)
        else:
            size = width * height * layout.samples
            raw = np.frombuffer(_DECOMPRESS[layout.compression](data, size), dtype=np.uint8)
            rows = min(raw.size, size) // (width * layout.samples)
            pixels = raw[:rows * width * layout.samples].reshape(rows, width, layout.samples)
            if layout.predictor == 2:
                pixels = imagecodecs.delta_decode(pixels, axis=-2)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.shape[2] == 1:
            return np.repeat(pixels, 3, axis=2)
        return pixels[:, :, :3]

    def associated(self, name: str) -> np.ndarray:
        index = self._associated[name]
        level = self._layouts[index].level

        def tile(col: int, row: int) -> np.ndarray | None:
            data = self.stored_tile(index, col, row)
            return None if data is None else self.decode(index, data)

        return assemble(level, 0, 0, level.width, level.height, tile)


def open_tiff_slide(source: ByteSource, cache: DecodedTileCache | None = None
                    ) -> TiledSlideReader:
    """Open a pyramidal TIFF, SVS, OME-TIFF or NDPI slide (NDPI:
    :func:`atrium.slides.ndpi.open_ndpi_slide`).

    Reads only the file's structure (typically tens to hundreds of kilobytes, in
    64 KiB blocks). ``cache``, optional, keeps decoded tiles (see
    :class:`~atrium.slides.tiled.TiledSlideReader`).

    Raises
    ------
    UnsupportedMediaType
        Not a TIFF, or a TIFF of a kind not supported (the detail names what is).
    BadRequest
        The file is damaged or truncated, or a header is past a limit.
    """
    if source.size < 16 or source.read(0, 4) not in _MAGIC:
        raise unsupported("the file is not a TIFF")
    # Imported here: the NDPI reader builds on this module's limits and helpers.
    from atrium.slides import ndpi

    if ndpi.is_ndpi(source):
        return ndpi.open_ndpi_slide(source, cache)
    with _tifffile_errors() as errors, tifffile.TiffFile(SourceFile(source)) as tif:  # type: ignore[arg-type]
        info, tiff_source = _parse(tif, source)
        if errors:
            raise BadRequest(f"the slide file is damaged or truncated: {errors[0]}")
    return TiledSlideReader(tiff_source, info, cache)


class _ThreadErrors(logging.Handler):
    """Collects tifffile's error records of one thread: tifffile logs, rather than
    raises, a structure it cannot follow (an IFD past the end of the file)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append("the TIFF structure is invalid")


@contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    handler = _ThreadErrors()
    tifffile_log = logging.getLogger("tifffile")
    tifffile_log.addHandler(handler)
    try:
        yield handler.messages
    except ApiError:
        raise
    except Exception as exc:
        # tifffile raises whatever the damage leads to (struct.error, ValueError,
        # IndexError, …); all of it means the same to the uploader.
        log.info("TIFF refused as damaged", exc_info=True)
        raise BadRequest("the slide file is damaged or truncated: tifffile cannot read its "
                         "structure") from exc
    finally:
        tifffile_log.removeHandler(handler)


def _parse(tif: tifffile.TiffFile, source: ByteSource) -> tuple[SlideInfo, TiffSource]:
    if tif.is_ndpi:
        # An NDPI marker where is_ndpi() found no readable NDPI directory.
        raise BadRequest("the slide file is damaged: its NDPI directories cannot be read")
    for flag, name in _REFUSED.items():
        if getattr(tif, f"is_{flag}", False):
            raise unsupported(f"{name} files are not supported")
    file_format = "SVS" if tif.is_svs else "OME-TIFF" if tif.is_ome else "TIFF"
    level_pages, associated_pages = _PAGES[file_format](tif)
    first = level_pages[0]
    if not first.is_tiled and max(first.imagewidth, first.imagelength) > MAX_STRIPPED_SIDE:
        raise BadRequest(f"the image is not tiled and larger than {MAX_STRIPPED_SIDE} pixels "
                         "on a side; convert it to a tiled pyramid (e.g. vips tiffsave "
                         "--tile --pyramid)")
    layouts: list[_Layout] = []
    for page in level_pages:
        if layouts and not page.imagewidth < layouts[-1].level.width:
            break  # a pyramid shrinks; anything else after it is not one of its levels
        layouts.append(_layout(page, first.imagewidth, source.size, pyramid=True))
    tiles = sum(int(layout.offsets.size) for layout in layouts)
    if tiles > MAX_TILES:
        raise BadRequest(f"the slide has {tiles} tiles; the limit is {MAX_TILES}")
    associated: dict[str, int] = {}
    for name, page in associated_pages.items():
        if int(page.imagewidth) * int(page.imagelength) > _MAX_ASSOCIATED_PIXELS:
            log.info("associated image skipped name=%s reason=too large", name)
            continue
        try:
            layout = _layout(page, page.imagewidth, source.size, pyramid=False)
        except ApiError as exc:
            log.info("associated image skipped name=%s reason=%s", name, exc.detail)
            continue
        associated[name] = len(layouts)
        layouts.append(layout)
    tiff_source = TiffSource(source, layouts, len(layouts) - len(associated), associated)
    levels = tiff_source.stored_levels
    tile = levels[0].tile_width
    metadata = _METADATA[file_format](tif)
    properties = metadata.pop("properties", {})
    info = SlideInfo(
        file_format=file_format,
        levels=tuple(Level(lv.width, lv.height, lv.downsample) for lv in levels),
        tile_size=tile if tile == levels[0].tile_height and 64 <= tile <= 2048 else 256,
        associated=tuple(associated),
        lossless=all(lv.lossless for lv in levels),
        **metadata,
        properties={**properties,
                    "tiff.compression": _COMPRESSION_NAMES[layouts[0].compression],
                    "tiff.photometric": _PHOTOMETRIC_NAMES.get(first.photometric, "other"),
                    "tiff.bigtiff": bool(tif.is_bigtiff)},
    )
    return info, tiff_source


def _layout(page: tifffile.TiffPage, level0_width: int, file_size: int, *,
            pyramid: bool) -> _Layout:
    """Check one page against the limits and what can be served; keep its tiles."""
    width, height = int(page.imagewidth), int(page.imagelength)
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise BadRequest(f"the image is {width} × {height} pixels; each side must be "
                         f"between 1 and {MAX_SIDE}")
    if pyramid and width == level0_width and width * height > MAX_LEVEL0_PIXELS:
        raise BadRequest(f"the image has {width * height} pixels; the limit is "
                         f"{MAX_LEVEL0_PIXELS}")
    if page.is_tiled:
        tile_width, tile_height = int(page.tilewidth), int(page.tilelength)
        if not (16 <= tile_width <= MAX_TILE_SIDE and 16 <= tile_height <= MAX_TILE_SIDE):
            raise BadRequest(f"tiles are {tile_width} × {tile_height} pixels; each side must "
                             f"be between 16 and {MAX_TILE_SIDE}")
    else:
        if max(width, height) > MAX_STRIPPED_SIDE:
            raise BadRequest(f"a stripped image may be at most {MAX_STRIPPED_SIDE} pixels on "
                             "a side; convert it to a tiled pyramid")
        tile_width, tile_height = width, max(1, min(int(page.rowsperstrip or height), height))
        if tile_width * tile_height > MAX_TILE_SIDE * MAX_TILE_SIDE:
            raise BadRequest(f"strips of {tile_width} × {tile_height} pixels are larger than "
                             f"the limit of {MAX_TILE_SIDE} × {MAX_TILE_SIDE}")
    compression, photometric = int(page.compression), int(page.photometric)
    samples = int(page.samplesperpixel)
    if compression not in _COMPRESSION_NAMES:
        raise unsupported(f"TIFF compression {compression} is not supported")
    if int(page.bitspersample) != 8 or int(page.sampleformat) != 1:
        raise unsupported("only 8-bit images are supported")
    if not ((photometric == 1 and samples == 1) or (photometric == 2 and samples in (3, 4))
            or (photometric == 6 and samples == 3 and compression == _JPEG)):
        raise unsupported("only RGB and greyscale images are supported (not "
                          "multi-channel, palette or CMYK)")
    if samples > 1 and int(page.planarconfig) != 1:
        raise unsupported("only interleaved (contiguous) samples are supported")
    if compression == _JPEG and samples == 4:
        raise unsupported("JPEG with an alpha channel is not supported")
    offsets = np.asarray(page.dataoffsets, dtype=np.int64)
    counts = np.asarray(page.databytecounts, dtype=np.int64)
    level = StoredLevel(width, height, tile_width, tile_height,
                        downsample=level0_width / width, is_jpeg=compression == _JPEG,
                        lossless=compression != _JPEG)
    columns, rows = level.grid
    if columns * rows > MAX_TILES:
        raise BadRequest(f"a level has {columns * rows} tiles; the limit is {MAX_TILES}")
    if offsets.size != columns * rows or counts.size != offsets.size:
        raise BadRequest("the slide file is damaged: a level lists "
                         f"{offsets.size} tiles for a grid of {columns} × {rows}")
    if counts.size and int(counts.max()) > MAX_TILE_BYTES:
        raise BadRequest(f"a stored tile is {int(counts.max())} bytes; the limit is "
                         f"{MAX_TILE_BYTES}")
    if counts.size and (int(counts.min()) < 0 or int(offsets.min()) < 0
                        or int((offsets + counts).max()) > file_size):
        raise truncated()
    tables = page.jpegtables if compression == _JPEG else None
    return _Layout(level, offsets, counts, compression, int(page.predictor), samples,
                   bytes(tables) if tables else None,
                   rgb_jpeg=compression == _JPEG and photometric == 2)


# --- Which pages are levels, which are associated images ------------------------------

Pages = tuple[list[tifffile.TiffPage], dict[str, tifffile.TiffPage]]


def _top_pages(tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    pages: list[tifffile.TiffPage] = []
    for index, page in enumerate(tif.pages):
        if index >= _MAX_PAGES:
            raise BadRequest(f"the file has more than {_MAX_PAGES} images; the limit is "
                             f"{_MAX_PAGES}")
        if isinstance(page, tifffile.TiffPage):
            pages.append(page)
    if not pages:
        raise BadRequest("the slide file is damaged or truncated: it has no readable image")
    return pages


def _associated_name(page: tifffile.TiffPage) -> str | None:
    """"label", "macro" or "thumbnail" when the page says it is one: a description
    line starting with the word (Aperio: ``label 415x422``), or NewSubfileType 9
    (Aperio's macro)."""
    for line in re.split(r"[\r\n|]+", page.description or ""):
        words = line.strip().lower().split()
        if words and words[0] in _ASSOCIATED:
            return words[0]
    return "macro" if int(page.subfiletype) == 9 else None


def _svs_pages(tif: tifffile.TiffFile) -> Pages:
    pages = _top_pages(tif)
    levels, associated = [pages[0]], dict[str, tifffile.TiffPage]()
    for index, page in enumerate(pages[1:], start=1):
        name = _associated_name(page)
        if name is None and index == 1 and not page.is_tiled:
            name = "thumbnail"  # Aperio's second page, described by size only
        if name is not None:
            associated.setdefault(name, page)
        elif page.is_tiled and not int(page.subfiletype) & 1:
            levels.append(page)
    return levels, associated


def _tiff_pages(tif: tifffile.TiffFile) -> Pages:
    pages = _top_pages(tif)
    first = pages[0]
    levels, associated = [first], dict[str, tifffile.TiffPage]()
    subifds = list(first.pages or ()) if first.subifds else []
    for page in subifds:
        if isinstance(page, tifffile.TiffPage) and page.is_tiled:
            levels.append(page)
    for page in pages[1:]:
        name = _associated_name(page)
        if name is not None:
            associated.setdefault(name, page)
        elif not subifds and page.is_tiled:
            levels.append(page)
    return levels, associated


def _ome_pages(tif: tifffile.TiffFile) -> Pages:
    series = tif.series
    main = series[0]
    if main.axes not in ("YXS", "YX"):
        raise unsupported(f"OME-TIFF images with axes {main.axes} (several channels, planes "
                          "or time points) are not supported")
    levels = [level.keyframe for level in main.levels]
    in_subifds = len(levels) > 1
    associated: dict[str, tifffile.TiffPage] = {}
    for other in series[1:]:
        name = (other.name or "").lower()
        kind = next((k for k in _ASSOCIATED if k in name), "macro" if "overview" in name else None)
        if kind is not None and other.axes in ("YXS", "YX"):
            associated.setdefault(kind, other.keyframe)
        elif kind is None and not in_subifds and other.axes == main.axes:
            # Older writers store each level as an image of its own, after the first.
            levels.append(other.keyframe)
    return levels, associated


_PAGES: dict[str, Callable[[tifffile.TiffFile], Pages]] = {
    "SVS": _svs_pages, "OME-TIFF": _ome_pages, "TIFF": _tiff_pages,
}


# --- Metadata ------------------------------------------------------------------------

def _text(value: object, limit: int = 64) -> str | None:
    """A short printable string (device names), or None."""
    text = " ".join("".join(c for c in str(value) if c.isprintable()).split())[:limit]
    return text or None


def _number(value: object) -> float | None:
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if np.isfinite(number) else None


def _plausible_mpp(value: float | None) -> float | None:
    """Micrometres per pixel of a microscope (0.01-20), or None: a TIFF written by a
    desktop tool says 72 or 300 dpi, which is not the slide's scale."""
    return value if value is not None and 0.01 <= value <= 20 else None


def _tag(page: tifffile.TiffPage, code: int) -> object:
    tag = page.tags.get(code)
    return None if tag is None else tag.value


def _tiff_metadata(tif: tifffile.TiffFile) -> dict[str, Any]:
    page = tif.pages.first
    mpp: list[float | None] = [None, None]
    unit_um = {2: 25_400.0, 3: 10_000.0}.get(int(page.resolutionunit))
    if unit_um is not None:
        for axis, resolution in enumerate(page.resolution):
            if resolution and resolution > 0:
                mpp[axis] = _plausible_mpp(unit_um / resolution)
    make, model = _text(_tag(page, 271) or ""), _text(_tag(page, 272) or "")
    scan_date = None
    if isinstance(stamp := _tag(page, 306), str):
        try:
            scan_date = dt.datetime.strptime(stamp.strip()[:19], "%Y:%m:%d %H:%M:%S")
        except ValueError:
            scan_date = None
    return {"mpp_x": mpp[0], "mpp_y": mpp[1], "scan_date": scan_date,
            "scanner_model": " ".join(filter(None, (make, model))) or None}


def _svs_metadata(tif: tifffile.TiffFile) -> dict[str, Any]:
    fields = {}
    for part in (tif.pages.first.description or "").split("|")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    numbers = {key: _number(fields.get(key)) for key in _APERIO_NUMBERS}
    mpp = _plausible_mpp(numbers["MPP"])
    metadata = _tiff_metadata(tif)
    if mpp is not None:
        metadata["mpp_x"] = metadata["mpp_y"] = mpp
    if numbers["AppMag"]:
        metadata["magnification"] = f"{numbers['AppMag']:g}"
    if metadata["scanner_model"] is None:
        scanscope = _text(fields.get("ScanScope ID", ""), 32)
        metadata["scanner_model"] = f"Aperio ScanScope {scanscope}" if scanscope else "Aperio"
    metadata["scan_date"] = _aperio_date(fields) or metadata["scan_date"]
    metadata["properties"] = {f"aperio.{key}": value for key, value in numbers.items()
                              if value is not None}
    return metadata


def _aperio_date(fields: dict[str, str]) -> dt.datetime | None:
    """``Date = 12/29/09`` and ``Time = 09:59:15``, with ``Time Zone = GMT+0100``
    (or ``GMT+01:00``) when given."""
    try:
        stamp = dt.datetime.strptime(f"{fields['Date']} {fields['Time']}", "%m/%d/%y %H:%M:%S")
    except (KeyError, ValueError):
        return None
    zone = re.fullmatch(r"GMT([+-])(\d\d):?(\d\d)", fields.get("Time Zone", ""))
    if zone:
        offset = dt.timedelta(hours=int(zone[2]), minutes=int(zone[3]))
        stamp = stamp.replace(tzinfo=dt.timezone(offset if zone[1] == "+" else -offset))
    return stamp


def _ome_metadata(tif: tifffile.TiffFile) -> dict[str, Any]:
    metadata = _tiff_metadata(tif)
    xml = tif.ome_metadata or ""
    if len(xml) > 16 * 1024 * 1024:
        return metadata
    try:
        root = ET.fromstring(xml)  # noqa: S314 - no DTD is fetched; expat limits expansion
    except ET.ParseError:
        log.info("OME-XML unreadable; slide metadata left empty")
        return metadata
    image = root.find("{*}Image")
    pixels = image.find("{*}Pixels") if image is not None else None
    if pixels is not None:
        for axis in ("X", "Y"):
            size = _number(pixels.get(f"PhysicalSize{axis}"))
            scale = _OME_UNITS_UM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
            if size is not None and scale is not None:
                metadata[f"mpp_{axis.lower()}"] = _plausible_mpp(size * scale)
    objectives = {o.get("ID"): o for o in root.findall(".//{*}Objective")}
    chosen = image.find("{*}ObjectiveSettings") if image is not None else None
    objective = objectives.get(chosen.get("ID")) if chosen is not None else None
    objective = objective if objective is not None else next(iter(objectives.values()), None)
    if objective is not None and (power := _number(objective.get("NominalMagnification"))):
        metadata["magnification"] = f"{power:g}"
    microscope = root.find("{*}Instrument/{*}Microscope")
    if microscope is not None:
        names = (_text(microscope.get("Manufacturer", "")), _text(microscope.get("Model", "")))
        metadata["scanner_model"] = " ".join(filter(None, names)) or metadata["scanner_model"]
    acquired = image.findtext("{*}AcquisitionDate") if image is not None else None
    if acquired:
        with suppress(ValueError):
            metadata["scan_date"] = dt.datetime.fromisoformat(acquired.strip())
    return metadata


_METADATA: dict[str, Callable[[tifffile.TiffFile], dict[str, Any]]] = {
    "SVS": _svs_metadata, "OME-TIFF": _ome_metadata, "TIFF": _tiff_metadata,
}
