"""Hamamatsu NDPI slides: tiles built from restart intervals against the pattern and
against a full decode of each level, the passthrough of interval-aligned tiles,
bounded decoding elsewhere, offsets past 4 GiB, metadata without free text, and
damaged files."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from atrium.errors import BadRequest, NotFound, UnsupportedMediaType
from atrium.slides import ndpi
from atrium.slides.model import tile_grid
from atrium.slides.source import MemorySource, StoreSource
from atrium.slides.tiff import MAX_SIDE, open_tiff_slide
from atrium.slides.tiled import TiledSlideReader
from atrium.storage import FileObjectStore
from tests.support.slidegen import (
    NDPI_MODEL,
    NDPI_REFERENCE,
    NDPI_SERIAL,
    SCAN_DATE,
    associated_pattern,
    level_shape,
    pattern,
    write_ndpi,
    write_pyramid_tiff,
)

# Aligned: 4:2:0 (MCU 16 × 16), 8 MCUs per interval = 128 × 16 pixels, which tile a
# 256 grid; 1020 px = 64 MCUs, so the right column of tiles is cropped. Unaligned:
# 4:4:4, 5 MCUs per interval = 40 × 8 pixels at level 0 and one interval per row at
# the others — every tile is decoded from its intervals and encoded again.
GEOMETRIES = {"aligned": {"width": 1020, "height": 700, "restart_blocks": 8, "subsampling": 2},
              "unaligned": {"width": 1000, "height": 700, "restart_blocks": 5,
                            "subsampling": 0}}
LEVELS = 3
JPEG_MEAN_ERROR = 2.0

_FILES: dict[str, bytes] = {}


def ndpi_bytes(geometry: str = "aligned") -> bytes:
    if geometry not in _FILES:
        buffer = io.BytesIO()
        options = dict(GEOMETRIES[geometry])
        write_ndpi(buffer, options.pop("width"), options.pop("height"), levels=LEVELS,
                   **options)
        _FILES[geometry] = buffer.getvalue()
    return _FILES[geometry]


def open_ndpi(geometry: str = "aligned") -> TiledSlideReader:
    return open_tiff_slide(MemorySource(ndpi_bytes(geometry)))


def size_of(geometry: str) -> tuple[int, int]:
    return GEOMETRIES[geometry]["width"], GEOMETRIES[geometry]["height"]


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def decode(data: bytes) -> np.ndarray:
    if data.startswith(b"\x89PNG"):
        return np.asarray(imagecodecs.png_decode(data))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def full_decodes(data: bytes) -> list[np.ndarray]:
    """Each level's whole JPEG strip decoded by Pillow, independently of the reader:
    the directories walked with the layout NDPI uses."""
    images = []
    (offset,) = struct.unpack_from("<Q", data, 4)
    while offset:
        (count,) = struct.unpack_from("<H", data, offset)
        tags = {}
        for index in range(count):
            tag, _, _, value = struct.unpack_from("<HHII", data, offset + 2 + 12 * index)
            tags[tag] = value
        lens = struct.unpack("<f", struct.pack("<I", tags[65421]))[0]
        z = tags[65424]
        if lens > 0 and z == 0:
            strip = data[tags[273]:tags[273] + tags[279]]
            images.append(np.asarray(Image.open(io.BytesIO(strip)).convert("RGB")))
        (offset,) = struct.unpack_from("<Q", data, offset + 2 + 12 * count)
    return images


def entry(data: bytes | bytearray, tag: int, page: int = 0) -> int:
    """Where the 4-byte value field of ``tag`` of directory ``page`` is."""
    (offset,) = struct.unpack_from("<Q", data, 4)
    for _ in range(page):
        (count,) = struct.unpack_from("<H", data, offset)
        (offset,) = struct.unpack_from("<Q", data, offset + 2 + 12 * count)
    (count,) = struct.unpack_from("<H", data, offset)
    for index in range(count):
        position = offset + 2 + 12 * index
        if struct.unpack_from("<H", data, position)[0] == tag:
            return position + 8
    raise KeyError(tag)


def patched(tag: int, value: int, page: int = 0, code: str = "<I") -> bytes:
    data = bytearray(ndpi_bytes())
    struct.pack_into(code, data, entry(data, tag, page), value)
    return bytes(data)


# --- Levels, metadata ----------------------------------------------------------------

def test_levels_and_metadata_come_from_the_file() -> None:
    reader = open_ndpi()
    info = reader.info
    assert info.file_format == "NDPI" and info.tile_size == 256 and not info.lossless
    assert [(lv.width, lv.height) for lv in info.levels] == \
        [level_shape(1020, 700, k) for k in range(LEVELS)]
    assert [lv.downsample for lv in info.levels] == pytest.approx([1, 2, 4], rel=0.01)
    assert info.mpp_x == pytest.approx(0.25) and info.mpp_y == pytest.approx(0.25)
    assert info.magnification == "20"
    assert info.scanner_model == " ".join(NDPI_MODEL)
    assert info.scan_date == SCAN_DATE
    assert info.associated == ("macro",)  # not the tissue map
    properties = info.properties
    assert properties["hamamatsu.SourceLens"] == 20
    assert properties["hamamatsu.XOffsetFromSlideCentre"] == -1_234_567
    assert properties["hamamatsu.ScannerSerialNumber"] == NDPI_SERIAL
    assert properties["hamamatsu.Lamp.Intensity"] == 12.5
    assert properties["ndpi.restart_interval"] == [128, 16]
    text = json.dumps(properties)
    assert "Jane" not in text and NDPI_REFERENCE not in text and "called" not in text


def test_a_plain_tiff_is_not_taken_for_ndpi() -> None:
    buffer = io.BytesIO()
    write_pyramid_tiff(buffer, 600, 400, compression="zlib")
    assert not ndpi.is_ndpi(MemorySource(buffer.getvalue()))
    assert ndpi.is_ndpi(MemorySource(ndpi_bytes()))
    assert open_tiff_slide(MemorySource(buffer.getvalue())).info.file_format == "TIFF"


# --- Tiles ---------------------------------------------------------------------------

@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_every_tile_of_every_level_matches_the_source(geometry: str) -> None:
    reader = open_ndpi(geometry)
    decoded = full_decodes(ndpi_bytes(geometry))
    width, height = size_of(geometry)
    size = reader.info.tile_size
    for level in range(LEVELS):
        level_width, level_height = level_shape(width, height, level)
        assert decoded[level].shape == (level_height, level_width, 3)
        columns, rows = tile_grid(reader.info.levels[level], size)
        for col in range(columns):
            for row in range(rows):
                x, y = col * size, row * size
                w, h = min(size, level_width - x), min(size, level_height - y)
                expected = pattern(x, y, w, h, 2 ** level)
                tile = decode(reader.tile(level, col, row, "jpeg"))
                assert tile.shape == (h, w, 3), (level, col, row)
                assert mean_error(tile, expected) < JPEG_MEAN_ERROR, (level, col, row)
                full = decoded[level][y:y + h, x:x + w]
                assert mean_error(tile, full) < JPEG_MEAN_ERROR, (level, col, row)
                # PNG: the intervals' pixels as libjpeg decodes them, not re-encoded.
                png = decode(reader.tile(level, col, row, "png"))
                assert mean_error(png, full) < 0.5, (level, col, row)


def test_interior_tiles_of_aligned_intervals_are_built_without_decoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reader = open_ndpi("aligned")
    decoded = full_decodes(ndpi_bytes("aligned"))[0]

    calls: list[str] = []
    decode_block, encode = ndpi.NdpiSource.decode, imagecodecs.jpeg8_encode

    def counted(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(ndpi.NdpiSource, "decode", counted("decode", decode_block))
    monkeypatch.setattr(imagecodecs, "jpeg8_encode", counted("encode", encode))
    tile = reader.tile(0, 1, 1, "jpeg")
    assert tile == reader.source.stored_tile(0, 1, 1)
    # A valid JPEG of 256 × 256 with restart markers numbered from RST0 in order.
    assert Image.open(io.BytesIO(tile)).size == (256, 256)
    scan = tile[tile.index(b"\xff\xda"):]
    markers = [scan[i + 1] - 0xD0 for i in range(len(scan) - 1)
               if scan[i] == 0xFF and 0xD0 <= scan[i + 1] <= 0xD7]
    assert markers == [k % 8 for k in range(2 * 16 - 1)]  # 2 intervals × 16 MCU rows
    assert tile.endswith(b"\xff\xd9")
    # The passthrough tile shows the same pixels as the level decoded whole.
    assert mean_error(decode(tile), decoded[256:512, 256:512]) < 0.5
    assert calls == []
    reader.tile(0, 3, 0, "jpeg")  # the right edge is cropped: decoded and encoded
    assert calls == ["decode", "encode"]


def test_unaligned_intervals_are_decoded_a_block_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reader = open_ndpi("unaligned")
    assert reader.info.tile_size == 256
    shapes: list[tuple[int, ...]] = []
    original = ndpi.NdpiSource.decode

    def spy(self: ndpi.NdpiSource, level: int, data: bytes) -> np.ndarray:
        pixels = original(self, level, data)
        shapes.append(pixels.shape)
        return pixels

    monkeypatch.setattr(ndpi.NdpiSource, "decode", spy)
    for level in range(LEVELS):
        reader.tile(level, 0, 0, "jpeg")
    # Never a whole level (700 rows at level 0): a block is at most a tile high, and
    # as wide as a tile or one interval (a whole row of level 1: 504 pixels).
    assert shapes and all(h <= 256 and w <= 504 for h, w, _ in shapes), shapes


def test_regions_and_thumbnails_read_across_blocks() -> None:
    reader = open_ndpi("unaligned")
    region = reader.region(0, 230, 250, 300, 20)
    assert mean_error(region, pattern(230, 250, 300, 20, 1)) < JPEG_MEAN_ERROR


def test_the_macro_is_an_associated_image_and_the_map_is_not() -> None:
    reader = open_ndpi()
    macro = reader.associated("macro")
    assert mean_error(macro, associated_pattern("macro")) < JPEG_MEAN_ERROR
    for name in ("label", "map", "thumbnail"):
        with pytest.raises(NotFound):
            reader.associated(name)


def test_tiles_outside_the_grid_are_404() -> None:
    reader = open_ndpi()
    for level, col, row in [(0, 4, 0), (0, 0, 3), (3, 0, 0), (2, 1, 0)]:
        with pytest.raises(NotFound):
            reader.tile(level, col, row, "jpeg")


class CountingSource(MemorySource):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return super().read(offset, length)


def test_a_tile_reads_only_its_intervals() -> None:
    data = ndpi_bytes("aligned")
    source = CountingSource(data)
    reader = open_tiff_slide(source)
    source.reads.clear()
    reader.tile(0, 1, 1, "jpeg")
    read = sum(length for _, length in source.reads)
    level0 = full_decodes(data)[0]
    assert level0.shape[0] == 700
    # Its 16 rows of 2 intervals (runs close together are one request), a small part
    # of the level's strip — never the file.
    assert 0 < read < len(data) // 5 and len(source.reads) <= 16


def test_offsets_past_4_gib_use_the_high_halves(tmp_path: Path) -> None:
    path = tmp_path / "big.ndpi"
    write_ndpi(path, 1020, 700, levels=LEVELS, data_offset=2 ** 32 + 4096)
    size = path.stat().st_size
    assert size > 2 ** 32 and path.stat().st_blocks * 512 < 64 * 1024 * 1024  # sparse
    store = FileObjectStore(tmp_path)
    reader = open_tiff_slide(StoreSource(store, "big.ndpi", size))
    assert reader.info.file_format == "NDPI" and len(reader.info.levels) == LEVELS
    for level, col, row in [(0, 1, 1), (0, 3, 2), (1, 1, 1), (2, 0, 0)]:
        width, height = level_shape(1020, 700, level)
        x, y = col * 256, row * 256
        expected = pattern(x, y, min(256, width - x), min(256, height - y), 2 ** level)
        assert mean_error(decode(reader.tile(level, col, row, "jpeg")), expected) \
            < JPEG_MEAN_ERROR
    assert reader.associated("macro").shape == (240, 600, 3)


# --- Damaged and hostile files -------------------------------------------------------

def tile_everything(reader: TiledSlideReader) -> None:
    for level, lv in enumerate(reader.info.levels):
        columns, rows = tile_grid(lv, reader.info.tile_size)
        for col in range(columns):
            for row in range(rows):
                reader.tile(level, col, row, "jpeg")


@pytest.mark.parametrize("cut", [16, 100, 0.25, 0.5, 0.9, -40, -1])
def test_a_truncated_file_is_400(cut: float) -> None:
    data = ndpi_bytes()
    end = int(cut * len(data)) if isinstance(cut, float) else cut
    with pytest.raises(BadRequest, match="damaged|truncated"):
        tile_everything(open_tiff_slide(MemorySource(data[:end])))


@pytest.mark.parametrize(("tag", "value", "match"), [
    (256, MAX_SIDE + 1, "each side"),
    (257, 0, "each side"),
    (273, 2 ** 31, "truncated"),
    (279, 2 ** 31, "truncated"),
    (259, 22610, "compression"),
])
def test_absurd_or_unsupported_headers_are_refused(tag: int, value: int, match: str) -> None:
    with pytest.raises((BadRequest, UnsupportedMediaType), match=match):
        open_tiff_slide(MemorySource(patched(tag, value)))


def test_absurd_area_is_400() -> None:
    data = bytearray(ndpi_bytes())
    struct.pack_into("<I", data, entry(data, 256), 900_000)
    struct.pack_into("<I", data, entry(data, 257), 900_000)
    with pytest.raises(BadRequest, match="limit"):
        open_tiff_slide(MemorySource(bytes(data)))


def test_a_high_half_past_the_file_is_truncated() -> None:
    data = bytearray(ndpi_bytes())
    (offset,) = struct.unpack_from("<Q", data, 4)
    (count,) = struct.unpack_from("<H", data, offset)
    index = (entry(data, 273) - 8 - offset - 2) // 12
    struct.pack_into("<I", data, offset + 2 + 12 * count + 8 + 4 * index, 1)  # +4 GiB
    with pytest.raises(BadRequest, match="truncated"):
        open_tiff_slide(MemorySource(bytes(data)))


def test_directories_in_a_loop_are_400() -> None:
    data = bytearray(ndpi_bytes())
    (offset,) = struct.unpack_from("<Q", data, 4)
    (count,) = struct.unpack_from("<H", data, offset)
    struct.pack_into("<Q", data, offset + 2 + 12 * count, offset)
    with pytest.raises(BadRequest, match="loop"):
        open_tiff_slide(MemorySource(bytes(data)))


def test_mcu_starts_out_of_order_or_miscounted_are_400() -> None:
    data = bytearray(ndpi_bytes())
    field = entry(data, 65426)
    (values,) = struct.unpack_from("<I", data, field)
    struct.pack_into("<I", data, values + 8, 1)  # the third interval before the first
    with pytest.raises(BadRequest, match="McuStarts"):
        open_tiff_slide(MemorySource(bytes(data)))
    data = bytearray(ndpi_bytes())
    struct.pack_into("<I", data, field - 4, struct.unpack_from("<I", data, field - 4)[0] - 1)
    with pytest.raises(BadRequest):
        open_tiff_slide(MemorySource(bytes(data)))


def test_mcu_starts_pointing_off_the_markers_make_tiles_400() -> None:
    data = bytearray(ndpi_bytes())
    (values,) = struct.unpack_from("<I", data, entry(data, 65426))
    (second,) = struct.unpack_from("<I", data, values + 4)
    struct.pack_into("<I", data, values + 4, second + 3)
    reader = open_tiff_slide(MemorySource(bytes(data)))
    with pytest.raises(BadRequest, match="damaged"):
        reader.tile(0, 0, 0, "jpeg")


def test_garbled_entropy_data_makes_tiles_400_not_500() -> None:
    data = bytearray(ndpi_bytes())
    (strip,) = struct.unpack_from("<I", data, entry(data, 273))
    (values,) = struct.unpack_from("<I", data, entry(data, 65426))
    (first,) = struct.unpack_from("<I", data, values)
    start = strip + first
    data[start:start + 200] = bytes(range(200))  # Huffman codes that decode to nonsense
    reader = open_tiff_slide(MemorySource(bytes(data)))
    with pytest.raises(BadRequest, match="damaged"):
        reader.tile(0, 0, 0, "png")


def test_a_large_level_without_restart_markers_is_415() -> None:
    buffer = io.BytesIO()
    write_ndpi(buffer, 600, 400, levels=1, extras=False, macro=False)
    data = bytearray(buffer.getvalue())
    # Claim the level is huge; without McuStarts it would have to be decoded whole.
    struct.pack_into("<H", data, entry(data, 65426) - 8, 65000)  # no McuStarts any more
    struct.pack_into("<I", data, entry(data, 256), 60_000)
    with pytest.raises(UnsupportedMediaType, match="restart markers"):
        open_tiff_slide(MemorySource(bytes(data)))


def test_garbage_after_the_magic_is_not_a_5xx() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        blob = b"II*\x00" + rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
        with pytest.raises((BadRequest, UnsupportedMediaType)):
            open_tiff_slide(MemorySource(blob))



def test_a_nonzero_mcu_starts_high_half_points_past_the_image() -> None:
    data = bytearray(ndpi_bytes())
    (values,) = struct.unpack_from("<I", data, entry(data, 65432))
    struct.pack_into("<I", data, values + 4 * 5, 1)  # the sixth interval 4 GiB further
    with pytest.raises(BadRequest, match="McuStarts"):
        open_tiff_slide(MemorySource(bytes(data)))


def test_wide_intervals_choose_512_pixel_tiles() -> None:
    # 4:2:0 with 32 MCUs per interval: 512 × 16 pixels, which tile a 512 grid.
    buffer = io.BytesIO()
    write_ndpi(buffer, 2048, 600, levels=3, restart_blocks=32, extras=False)
    reader = open_tiff_slide(MemorySource(buffer.getvalue()))
    assert reader.info.tile_size == 512
    assert reader.tile(0, 1, 0, "jpeg") == reader.source.stored_tile(0, 1, 0)
    for level, col, row in [(0, 1, 0), (0, 3, 1), (1, 1, 0), (2, 0, 0)]:
        width, height = level_shape(2048, 600, level)
        x, y = col * 512, row * 512
        expected = pattern(x, y, min(512, width - x), min(512, height - y), 2 ** level)
        assert mean_error(decode(reader.tile(level, col, row, "jpeg")), expected) \
            < JPEG_MEAN_ERROR, (level, col, row)


def test_random_damage_is_always_a_4xx() -> None:
    """Bytes of the directories, values and strips overwritten at random: opening and
    reading every tile either works or is a 4xx problem, never another exception."""
    original = ndpi_bytes()
    (first,) = struct.unpack_from("<Q", original, 4)
    rng = np.random.default_rng(7)
    outcomes = {"ok": 0, "4xx": 0}
    for trial in range(150):
        data = bytearray(original)
        # Mostly the structure (directories and tag values, written after the strips).
        low = first - 2000 if trial % 3 else 12
        for position in rng.integers(low, len(data), int(rng.integers(1, 6))):
            data[int(position)] = int(rng.integers(0, 256))
        try:
            reader = open_tiff_slide(MemorySource(bytes(data)))
            tile_everything(reader)
            for name in reader.info.associated:
                reader.associated(name)
        except (BadRequest, UnsupportedMediaType):
            outcomes["4xx"] += 1
        else:
            outcomes["ok"] += 1
    assert outcomes["4xx"] > 0
