"""Hamamatsu NDPI slides, read by ranges like every TIFF (:mod:`atrium.slides.tiff`).

NDPI is a little-endian classic TIFF that stretches its offsets past 4 GiB: the
header's first-directory offset and every directory's next-directory offset are
8 bytes, and after each directory's entries and that next offset come 4 more bytes
per entry, the high 32 bits of the entry's value or value offset. ASCII values are
always stored at an offset. A file is taken for NDPI when its first directory, read
that way, carries tag 65420 (the format marker).

Each directory is one image stored as ONE baseline JPEG strip: a pyramid level
(65421, the source lens, > 0: its magnification), the macro photograph (-1) or a
tissue map (-2). A level's JPEG has restart markers every *restart interval* MCUs,
and 65426 (McuStarts, high bits in 65432) lists where, from the strip's start, each
interval's entropy-coded data begins. An interval is ``restart interval × MCU
width`` pixels wide and one MCU row tall; rows hold a whole number of them.

This module turns a block of whole intervals into a JPEG of its own — the level's
header with the frame size patched to the block's, then the intervals' data with
their restart markers renumbered from RST0 — without decoding anything. The
blocks are the stored tiles of a :class:`~atrium.slides.tiled.TiledSource`: where
intervals tile the slide's ``tile_size`` grid exactly, an interior tile is one
block, sent as built (the passthrough of :mod:`atrium.slides.tiled`); elsewhere
(edge tiles, PNG, other interval widths) blocks are decoded and the tile encoded
again. A block is at most a ``tile_size`` square, or one interval where that is
wider, and never more than :data:`MAX_BLOCK_PIXELS`: no read decodes a whole level.

Only the first focal plane (65424 = 0) is read. The macro is the associated image
``macro`` (PHI readers only, as an SVS macro); the map is not served. Metadata
keeps no free text: the reference (65427), the comments and the property map
(65449) can hold a patient's name, so only numbers and the scanner's identity are
kept.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import struct
from dataclasses import dataclass, replace
from typing import Any

import imagecodecs
import numpy as np

from atrium.errors import ApiError, BadRequest
from atrium.slides.model import Level, SlideInfo
from atrium.slides.source import ByteSource, SourceFile, truncated
from atrium.slides.tiff import (
    MAX_LEVEL0_PIXELS,
    MAX_SIDE,
    MAX_TILE_BYTES,
    unsupported,
)
from atrium.slides.tiff import _number as parse_number
from atrium.slides.tiff import _plausible_mpp as plausible_mpp
from atrium.slides.tiff import _text as short_text
from atrium.slides.tiled import (
    DecodedTileCache,
    StoredLevel,
    TiledSlideReader,
    TiledSource,
    assemble,
)

log = logging.getLogger(__name__)

__all__ = ["MAX_BLOCK_PIXELS", "MAX_INTERVALS", "NdpiSource", "is_ndpi", "open_ndpi_slide"]

MAX_INTERVALS = 8_000_000
"""Restart intervals of one level: the reader keeps 8 bytes for each."""
MAX_BLOCK_PIXELS = 4096 * 4096
"""Pixels of one block decoded at a time (48 MiB of RGB)."""
_MAX_PAGES = 256
_MAX_ENTRIES = 1024
_MAX_HEADER = 1024 * 1024
_MAX_TEXT = 1024 * 1024
_MAX_VALUES = 4096
_MAX_MACRO_PIXELS = 64 * 1024 * 1024
_JPEG_MAX_SIDE = 65_500  # what libjpeg accepts in a frame header
_TILE_SIZES = (256, 512)
_COALESCE_GAP = 32 * 1024  # reads of a block's rows closer than this become one

_FORMAT, _LENS, _X_OFFSET, _Y_OFFSET, _FOCAL_PLANE = 65420, 65421, 65422, 65423, 65424
_MCU_STARTS, _MCU_STARTS_HIGH, _SERIAL, _PROPERTY_MAP = 65426, 65432, 65442, 65449
# TIFF field types: (struct code, bytes per value).
_TYPES = {1: ("B", 1), 2: ("s", 1), 3: ("H", 2), 4: ("I", 4), 5: ("II", 8), 6: ("b", 1),
          7: ("B", 1), 8: ("h", 2), 9: ("i", 4), 10: ("ii", 8), 11: ("f", 4), 12: ("d", 8),
          16: ("Q", 8)}
_ASCII = 2
_NUMERIC_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,47}")
_MAX_PROPERTIES = 64

_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"


def _damaged(what: str) -> BadRequest:
    return BadRequest(f"the slide file is damaged: {what}")


# --- Directories ---------------------------------------------------------------------

class _Directory:
    """One NDPI image file directory: its entries' values, read on demand."""

    def __init__(self, source: ByteSource, offset: int) -> None:
        self.source = source
        if offset < 12 or offset + 2 > source.size:
            raise truncated()
        (count,) = struct.unpack("<H", source.read(offset, 2))
        if not 0 < count <= _MAX_ENTRIES:
            raise _damaged(f"a directory lists {count} entries")
        end = offset + 2 + 12 * count + 8 + 4 * count
        if end > source.size:
            raise truncated()
        raw = source.read(offset + 2, end - offset - 2)
        self.next = struct.unpack_from("<Q", raw, 12 * count)[0]
        high = raw[12 * count + 8:]
        self.entries: dict[int, tuple[int, int, bytes]] = {}
        for index in range(count):
            tag, kind, number = struct.unpack_from("<HHI", raw, 12 * index)
            value = raw[12 * index + 8:12 * index + 12] + high[4 * index:4 * index + 4]
            self.entries[tag] = (kind, number, value)

    def __contains__(self, tag: int) -> bool:
        return tag in self.entries

    def values(self, tag: int) -> tuple[Any, ...] | str | None:
        """The tag's values (numbers as a tuple, ASCII as a str), or None if absent."""
        if tag not in self.entries:
            return None
        kind, count, field = self.entries[tag]
        if kind not in _TYPES:
            raise _damaged(f"tag {tag} has the unknown type {kind}")
        code, size = _TYPES[kind]
        length = count * size
        # Tags read here are a few numbers or a text; lists of millions go to array().
        if length > (_MAX_TEXT if kind == _ASCII else 8 * _MAX_VALUES):
            raise _damaged(f"tag {tag} declares {count} values")
        high = field[4:] != b"\x00\x00\x00\x00"
        if length <= 4 and kind != _ASCII:
            if high and count == 1 and kind in (4, 9):
                # A single LONG past 4 GiB (a strip's offset): the extension is its top half.
                return struct.unpack("<q" if kind == 9 else "<Q", field)
            data = field[:length]
        else:
            (offset,) = struct.unpack("<Q", field)
            if offset + length > self.source.size:
                raise truncated()
            data = self.source.read(offset, length)
        if kind == _ASCII:
            return data.split(b"\x00", 1)[0].decode("latin-1")
        per_value = len(code)
        return struct.unpack(f"<{count * per_value}{code[0]}", data)

    def array(self, tag: int) -> np.ndarray | None:
        """A LONG array (McuStarts) as int64, without a tuple of millions of ints."""
        if tag not in self.entries:
            return None
        kind, count, field = self.entries[tag]
        if kind != 4:
            raise _damaged(f"tag {tag} is not a list of LONG values")
        if count > MAX_INTERVALS:
            raise BadRequest(f"a level has {count} restart intervals; the limit is "
                             f"{MAX_INTERVALS}")
        if count == 1:
            return np.array(self.values(tag), dtype=np.int64)
        (offset,) = struct.unpack("<Q", field)
        if offset + 4 * count > self.source.size:
            raise truncated()
        return np.frombuffer(self.source.read(offset, 4 * count), dtype="<u4").astype(np.int64)

    def number(self, tag: int, default: float | None = None) -> float | None:
        values = self.values(tag)
        if values is None or isinstance(values, str) or not values:
            return default
        if self.entries[tag][0] in (5, 10):  # RATIONAL: numerator, denominator
            return values[0] / values[1] if values[1] else default
        return float(values[0])

    def text(self, tag: int) -> str | None:
        values = self.values(tag)
        return values if isinstance(values, str) else None


def is_ndpi(source: ByteSource) -> bool:
    """Whether ``source`` is an NDPI file: its first directory, found through the
    header's 8-byte offset and read as NDPI lays it out, holds tag 65420. False for
    anything else, including an NDPI whose first directory cannot be read (it is then
    refused as a damaged TIFF)."""
    if source.size < 16:
        return False
    header = source.read(0, 12)
    if header[:4] != b"II*\x00":
        return False
    (offset,) = struct.unpack_from("<Q", header, 4)
    try:
        return _FORMAT in _Directory(source, offset)
    except ApiError:
        return False


class _Blocks:
    """The file seen through a :class:`~atrium.slides.source.SourceFile` while parsing:
    directories and headers are many small reads close together."""

    def __init__(self, source: ByteSource) -> None:
        self._file = SourceFile(source)
        self.size = source.size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise truncated()
        self._file.seek(offset)
        data = self._file.read(length)
        if len(data) != length:
            raise truncated()
        return data

    def close(self) -> None:
        """The source is the reader's to close, not the parse's."""


def _directories(source: ByteSource) -> list[_Directory]:
    (offset,) = struct.unpack("<Q", source.read(4, 8))
    seen: set[int] = set()
    directories: list[_Directory] = []
    while offset:
        if offset in seen:
            raise _damaged("its directories form a loop")
        if len(directories) >= _MAX_PAGES:
            raise BadRequest(f"the file has more than {_MAX_PAGES} images; the limit is "
                             f"{_MAX_PAGES}")
        seen.add(offset)
        directory = _Directory(source, offset)
        directories.append(directory)
        offset = directory.next
    return directories


# --- JPEG headers --------------------------------------------------------------------

@dataclass(frozen=True)
class _Header:
    """The JPEG header of a level's strip: SOI up to the end of the SOS segment."""

    data: bytes
    sof: int  # offset of the frame header's height field
    mcu_width: int
    mcu_height: int
    restart_interval: int  # MCUs; 0 = no restart markers

    def patched(self, width: int, height: int) -> bytes:
        """The header declaring a ``width`` × ``height`` frame."""
        return b"".join((self.data[:self.sof], struct.pack(">HH", height, width),
                         self.data[self.sof + 4:]))


def _parse_header(data: bytes) -> _Header:
    """The header at the start of ``data`` (the first bytes of a strip). ValueError
    when it is not a baseline JPEG header that ends in a scan."""
    if not data.startswith(_SOI):
        raise ValueError("the strip is not a JPEG stream")
    position, sof, restart, mcu, components = 2, 0, 0, (8, 8), 0
    while position + 4 <= len(data):
        marker, length = data[position + 1], struct.unpack_from(">H", data, position + 2)[0]
        if data[position] != 0xFF or length < 2:
            raise ValueError("the JPEG header is malformed")
        segment = data[position + 4:position + 2 + length]
        if marker in (0xC0, 0xC1):
            if len(segment) < 6 or segment[0] != 8:
                raise ValueError("the JPEG frame is not 8-bit")
            components = segment[5]
            factors = [segment[7 + 3 * i] for i in range(components)
                       if 8 + 3 * i < len(segment)]
            if components not in (1, 3) or len(factors) != components:
                raise ValueError("the JPEG frame has neither 1 nor 3 components")
            mcu = (8 * max(f >> 4 for f in factors), 8 * max(f & 0xF for f in factors))
            sof = position + 5
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            raise ValueError("the JPEG is not baseline (progressive, lossless or arithmetic)")
        elif marker == 0xDD:
            if len(segment) < 2:
                raise ValueError("the JPEG restart interval is malformed")
            restart = struct.unpack_from(">H", segment)[0]
        elif marker == 0xDA:
            if not sof:
                raise ValueError("the JPEG scan comes before its frame header")
            end = position + 2 + length
            if end > len(data):
                raise ValueError("the JPEG header is cut short")
            return _Header(data[:end], sof, mcu[0], mcu[1], restart)
        position += 2 + length
    raise ValueError("the JPEG header has no scan")


def _read_header(source: ByteSource, start: int, limit: int) -> _Header:
    length = min(limit, _MAX_HEADER, source.size - start)
    try:
        return _parse_header(source.read(start, length))
    except ValueError as exc:
        raise _damaged(f"a level's JPEG cannot be read ({exc})") from exc


# --- Levels --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    """Where a level's (or the macro's) restart intervals are, and its blocks."""

    level: StoredLevel  # tile_width/height: the block
    header: _Header
    strip_end: int  # absolute offset of the strip's end
    starts: np.ndarray  # absolute offset of each interval's first byte, row by row
    interval_width: int
    interval_height: int
    per_row: int  # intervals in a row


def _interval_layout(directory: _Directory, source: ByteSource, width: int, height: int,
                     level0_width: int) -> _Layout:
    """The image's intervals, each its own block until :func:`_blocked` says better."""
    offsets, counts = directory.values(273), directory.values(279)
    if (not isinstance(offsets, tuple) or not isinstance(counts, tuple)
            or len(offsets) != 1 or len(counts) != 1):
        raise unsupported("NDPI images stored in more than one strip are not supported")
    start, count = int(offsets[0]), int(counts[0])
    if start <= 0 or count <= 0:
        raise _damaged("an image has no data")
    if start + count > source.size:
        raise truncated()
    starts = directory.array(_MCU_STARTS)
    high = directory.array(_MCU_STARTS_HIGH)
    if starts is not None and high is not None:
        if high.size != starts.size:
            raise _damaged("the high bytes of McuStarts do not match McuStarts")
        starts = starts + (high << 32)
    header = _read_header(source, start, count if starts is None else int(starts[0]) or count)
    mcu_w, mcu_h = header.mcu_width, header.mcu_height
    columns, rows = -(-width // mcu_w), -(-height // mcu_h)
    if starts is None or header.restart_interval == 0:
        # No intervals: the image is decoded whole, so it must be small.
        if (width * height > MAX_BLOCK_PIXELS or max(width, height) > _JPEG_MAX_SIDE
                or count > MAX_TILE_BYTES):
            raise unsupported(f"an NDPI image of {width} × {height} pixels has no restart "
                              f"markers; without them only images of up to {MAX_BLOCK_PIXELS} "
                              "pixels are supported")
        interval_w, interval_h, per_row = columns * mcu_w, rows * mcu_h, 1
        starts = np.array([len(header.data)], dtype=np.int64)
        block_w, block_h = width, height
    else:
        interval_w, interval_h = header.restart_interval * mcu_w, mcu_h
        if columns % header.restart_interval:
            raise unsupported("NDPI levels whose restart intervals run across rows are not "
                              "supported")
        if interval_w > _JPEG_MAX_SIDE or interval_w * interval_h > MAX_BLOCK_PIXELS:
            raise unsupported(f"restart intervals of {interval_w} × {interval_h} pixels are "
                              "larger than supported")
        per_row = columns // header.restart_interval
        if starts.size != per_row * rows:
            raise _damaged(f"McuStarts lists {starts.size} restart intervals for a grid of "
                           f"{per_row} × {rows}")
        block_w, block_h = interval_w, interval_h
    if starts.size and (int(starts[0]) < len(header.data)
                        or (starts.size > 1 and not bool(np.all(np.diff(starts) > 2)))
                        or int(starts[-1]) + 2 >= count):
        raise _damaged("McuStarts does not list increasing offsets within the image")
    level = StoredLevel(width, height, block_w, block_h, downsample=level0_width / width,
                        is_jpeg=True, lossless=False)
    return _Layout(level, header, start + count, starts + start, interval_w, interval_h,
                   per_row)


def _blocked(layout: _Layout, tile_size: int) -> _Layout:
    """The layout with blocks of whole intervals as close to ``tile_size`` squares as
    they can be: exactly those when the intervals divide them."""
    interval_w, interval_h = layout.interval_width, layout.interval_height
    if layout.starts.size == 1:
        return layout  # one block: the whole image
    block_w = interval_w * max(1, tile_size // interval_w)
    block_h = interval_h * max(1, min(tile_size // interval_h,
                                      MAX_BLOCK_PIXELS // (block_w * interval_h)))
    level = replace(layout.level, tile_width=block_w, tile_height=block_h)
    return replace(layout, level=level)


class NdpiSource(TiledSource):
    """Blocks of restart intervals of an NDPI file: layouts ``[0, levels)`` are the
    pyramid, a last one the macro when ``macro``."""

    def __init__(self, source: ByteSource, layouts: list[_Layout], levels: int,
                 macro: bool) -> None:
        self.source = source
        self._layouts = layouts
        self.stored_levels = tuple(layout.level for layout in layouts[:levels])
        self._macro = levels if macro else None

    def close(self) -> None:
        self.source.close()

    def stored_tile(self, level: int, col: int, row: int) -> bytes:
        layout = self._layouts[level]
        stored = layout.level
        x0, y0 = col * stored.tile_width, row * stored.tile_height
        width = min(stored.tile_width, stored.width - x0)
        height = min(stored.tile_height, stored.height - y0)
        first_col = x0 // layout.interval_width
        last_col = -(-(x0 + width) // layout.interval_width)  # exclusive
        first_row = y0 // layout.interval_height
        last_row = -(-(y0 + height) // layout.interval_height)
        # Each row of intervals is one run of bytes, up to the next interval's start
        # (or the strip's end): its data and the marker after it.
        ranges = []
        for interval_row in range(first_row, last_row):
            index = interval_row * layout.per_row
            begin = int(layout.starts[index + first_col])
            after = index + last_col
            end = int(layout.starts[after]) if after < layout.starts.size else layout.strip_end
            ranges.append((begin, end))
        total = sum(end - begin for begin, end in ranges)
        if total > MAX_TILE_BYTES:
            raise ValueError(f"a block of restart intervals is {total} bytes")
        out = bytearray(layout.header.patched(width, height))
        sequence = 0
        for run_index, run in enumerate(self._read(ranges)):
            base = ranges[run_index][0]
            index = (first_row + run_index) * layout.per_row + first_col
            piece = bytearray(run)
            # Interval i ends at the next one's start with the marker that closes it: RST
            # numbered in the level's sequence, or EOI after the level's last interval.
            # Renumbered in the block's sequence, the block's last one made its EOI.
            for i in range(index, index + last_col - first_col):
                end = (int(layout.starts[i + 1]) if i + 1 < layout.starts.size
                       else layout.strip_end) - base
                if piece[end - 2] != 0xFF or not (0xD0 <= piece[end - 1] <= 0xD7
                                                  or piece[end - 1] == 0xD9):
                    raise ValueError("a restart marker is not where McuStarts says")
                piece[end - 1] = 0xD0 + sequence % 8
                sequence += 1
            out += piece
        out[-2:] = _EOI
        return bytes(out)

    def _read(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The byte ranges, reading ranges close to each other in one request."""
        runs: list[bytes] = []
        group_start, group_end, group = ranges[0][0], ranges[0][1], [ranges[0]]
        for begin, end in [*ranges[1:], (-1, -1)]:
            if begin >= 0 and begin >= group_end and begin - group_end <= _COALESCE_GAP:
                group.append((begin, end))
                group_end = end
                continue
            data = self.source.read(group_start, group_end - group_start)
            runs.extend(data[b - group_start:e - group_start] for b, e in group)
            group_start, group_end, group = begin, end, [(begin, end)]
        return runs

    def decode(self, level: int, data: bytes) -> np.ndarray:
        stored = self._layouts[level].level
        pixels = np.asarray(imagecodecs.jpeg8_decode(data))
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.shape[0] > stored.tile_height or pixels.shape[1] > stored.tile_width:
            raise ValueError(f"a block decodes to {pixels.shape}, larger than expected")
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        if pixels.shape[1] < stored.tile_width:
            # The last column's block stops at the image's edge; assemble() crops anyway.
            pad = ((0, 0), (0, stored.tile_width - pixels.shape[1]), (0, 0))
            pixels = np.pad(pixels[:, :, :3], pad, constant_values=255)
        return pixels[:, :, :3]

    def associated(self, name: str) -> np.ndarray:
        if name != "macro" or self._macro is None:
            return super().associated(name)
        index = self._macro
        level = self._layouts[index].level
        return assemble(level, 0, 0, level.width, level.height,
                        lambda col, row: self.decode(index, self.stored_tile(index, col, row)))


def open_ndpi_slide(source: ByteSource, cache: DecodedTileCache | None = None
                    ) -> TiledSlideReader:
    """Open an NDPI slide (one :func:`is_ndpi` accepts): its directories, each level's
    JPEG header and McuStarts — a few ranged reads.

    Raises
    ------
    UnsupportedMediaType
        An NDPI of a kind not supported (JPEG XR, no restart markers on a large level).
    BadRequest
        The file is damaged or truncated, or a header is past a limit.
    """
    try:
        info, ndpi_source = _parse(source)
    except ApiError:
        raise
    except (ValueError, IndexError, struct.error, OverflowError, ZeroDivisionError) as exc:
        log.info("NDPI refused as damaged", exc_info=True)
        raise _damaged("its structure cannot be read") from exc
    return TiledSlideReader(ndpi_source, info, cache)


def _image_size(directory: _Directory) -> tuple[int, int]:
    width, height = int(directory.number(256) or 0), int(directory.number(257) or 0)
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise BadRequest(f"the image is {width} × {height} pixels; each side must be "
                         f"between 1 and {MAX_SIDE}")
    compression = int(directory.number(259) or 1)
    if compression != 7:
        raise unsupported(f"NDPI images with TIFF compression {compression} are not "
                          "supported (only JPEG)")
    bits = directory.values(258)
    if isinstance(bits, tuple) and any(b != 8 for b in bits):
        raise unsupported("only 8-bit images are supported")
    return width, height


def _parse(source: ByteSource) -> tuple[SlideInfo, NdpiSource]:
    levels: list[tuple[_Directory, int, int]] = []
    macro: _Directory | None = None
    parsing = _Blocks(source)
    for directory in _directories(parsing):
        lens = directory.number(_LENS, 0.0) or 0.0
        if lens == -1 and macro is None:
            macro = directory
        elif lens > 0 and not directory.number(_FOCAL_PLANE, 0.0):
            width, height = _image_size(directory)
            levels.append((directory, width, height))
    if not levels:
        raise _damaged("it has no pyramid level (no image with a source lens)")
    levels.sort(key=lambda item: -item[1])
    first, width0, height0 = levels[0]
    if width0 * height0 > MAX_LEVEL0_PIXELS:
        raise BadRequest(f"the image has {width0 * height0} pixels; the limit is "
                         f"{MAX_LEVEL0_PIXELS}")
    layouts: list[_Layout] = []
    for directory, width, height in levels:
        if layouts and not width < layouts[-1].level.width:
            continue  # the same size again: not a level of this pyramid
        layouts.append(_interval_layout(directory, parsing, width, height, width0))
    intervals = sum(int(layout.starts.size) for layout in layouts)
    if intervals > MAX_INTERVALS:
        raise BadRequest(f"the slide has {intervals} restart intervals; the limit is "
                         f"{MAX_INTERVALS}")
    base = layouts[0]
    tile_size = next((size for size in _TILE_SIZES if base.starts.size > 1
                      and size % base.interval_width == 0
                      and size % base.interval_height == 0), _TILE_SIZES[0])
    layouts = [_blocked(layout, tile_size) for layout in layouts]
    count = len(layouts)
    has_macro = False
    if macro is not None:
        try:
            width, height = _image_size(macro)
            if width * height > _MAX_MACRO_PIXELS:
                raise BadRequest(f"the macro image has {width * height} pixels")
            layouts.append(_blocked(_interval_layout(macro, parsing, width, height, width),
                                    tile_size))
            has_macro = True
        except ApiError as exc:
            log.info("associated image skipped name=macro reason=%s", exc.detail)
    ndpi_source = NdpiSource(source, layouts, count, has_macro)
    info = SlideInfo(
        file_format="NDPI",
        levels=tuple(Level(lv.width, lv.height, lv.downsample)
                     for lv in ndpi_source.stored_levels),
        tile_size=tile_size,
        associated=("macro",) if has_macro else (),
        lossless=False,
        **_metadata(first, base),
    )
    return info, ndpi_source


# --- Metadata ------------------------------------------------------------------------

def _metadata(directory: _Directory, base: _Layout) -> dict[str, Any]:
    mpp: list[float | None] = [None, None]
    unit_um = {2: 25_400.0, 3: 10_000.0}.get(int(directory.number(296, 2) or 2))
    for axis, tag in enumerate((282, 283)):
        resolution = directory.number(tag)
        if unit_um is not None and resolution and resolution > 0:
            mpp[axis] = plausible_mpp(unit_um / resolution)
    lens = directory.number(_LENS)
    make, model = short_text(directory.text(271) or ""), short_text(directory.text(272) or "")
    scan_date = None
    if stamp := directory.text(306):
        try:
            scan_date = dt.datetime.strptime(stamp.strip()[:19], "%Y:%m:%d %H:%M:%S")
        except ValueError:
            scan_date = None
    properties: dict[str, Any] = {
        "tiff.compression": "jpeg", "ndpi.restart_interval": [base.interval_width,
                                                              base.interval_height]}
    if lens is not None and np.isfinite(lens):
        properties["hamamatsu.SourceLens"] = lens
    for tag, name in ((_X_OFFSET, "XOffsetFromSlideCentre"), (_Y_OFFSET,
                                                              "YOffsetFromSlideCentre")):
        value = directory.number(tag)
        if value is not None and np.isfinite(value):
            properties[f"hamamatsu.{name}"] = value
    serial = directory.text(_SERIAL) or ""
    if re.fullmatch(r"[A-Za-z0-9-]{1,32}", serial.strip()):
        properties["hamamatsu.ScannerSerialNumber"] = serial.strip()
    properties.update(_property_map(directory.text(_PROPERTY_MAP) or ""))
    return {
        "mpp_x": mpp[0], "mpp_y": mpp[1], "scan_date": scan_date,
        "magnification": f"{lens:g}" if lens is not None and 0 < lens < 1000 else None,
        "scanner_model": " ".join(filter(None, (make, model))) or "Hamamatsu",
        "properties": properties,
    }


def _property_map(text: str) -> dict[str, float]:
    """The numeric entries of the property map (``key=value`` lines); text values
    (names, free comments) are dropped."""
    kept: dict[str, float] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _NUMERIC_KEY.fullmatch(key) or len(kept) >= _MAX_PROPERTIES:
            continue
        if (number := parse_number(value)) is not None:
            kept[f"hamamatsu.{key}"] = number
    return kept
