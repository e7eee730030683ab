"""Pyramidal TIFF, SVS and OME-TIFF slides: every tile against the pattern, the
passthrough of stored JPEG tiles, metadata, ranged reads, and hostile files."""

from __future__ import annotations

import datetime as dt
import io
import struct
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atrium.cache import ByteLru
from atrium.errors import ApiError, BadRequest, NotFound, UnsupportedMediaType
from atrium.slides import tiled
from atrium.slides.model import tile_grid
from atrium.slides.source import MemorySource, StoreSource
from atrium.slides.tiff import MAX_SIDE, MAX_TILE_BYTES, MAX_TILES, open_tiff_slide
from atrium.slides.tiled import (
    StoredLevel,
    TiledSlideReader,
    TiledSource,
    resized,
    standalone_jpeg,
    thumbnail,
)
from atrium.storage import FileObjectStore
from tests.support.slidegen import (
    SCAN_DATE,
    SCANNER,
    associated_pattern,
    level_shape,
    pattern,
    write_big_jpeg_pyramid,
    write_pyramid_tiff,
)

WIDTH, HEIGHT, TILE = 1000, 700, 256
FLAVORS = ("tiff", "svs", "ome")
COMPRESSIONS = ("jpeg", "zlib", "none")
JPEG_MEAN_ERROR = 2.0  # mean |difference| per channel of a q90 JPEG of the pattern


def pyramid(flavor: str = "tiff", compression: str = "jpeg", **options: object) -> bytes:
    buffer = io.BytesIO()
    write_pyramid_tiff(buffer, options.pop("width", WIDTH), options.pop("height", HEIGHT),
                       flavor=flavor, compression=compression, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


_FILES: dict[tuple[str, str], bytes] = {}


def slide_bytes(flavor: str, compression: str) -> bytes:
    if (flavor, compression) not in _FILES:
        associated = ("thumbnail", "label", "macro") if flavor == "svs" else ("label", "macro")
        _FILES[flavor, compression] = pyramid(flavor, compression, associated=associated)
    return _FILES[flavor, compression]


def open_slide(flavor: str = "tiff", compression: str = "jpeg") -> TiledSlideReader:
    return open_tiff_slide(MemorySource(slide_bytes(flavor, compression)))


def decode(data: bytes) -> np.ndarray:
    if data.startswith(b"\x89PNG"):
        return np.asarray(imagecodecs.png_decode(data))
    return np.asarray(imagecodecs.jpeg8_decode(data))


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- Tiles, regions, thumbnails --------------------------------------------------------

@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_tile_of_every_level_shows_the_pattern(flavor: str, compression: str) -> None:
    reader = open_slide(flavor, compression)
    lossless = compression != "jpeg"
    assert reader.info.lossless is lossless
    assert [(lv.width, lv.height) for lv in reader.info.levels] == [
        level_shape(WIDTH, HEIGHT, k) for k in range(3)]
    for k, level in enumerate(reader.info.levels):
        columns, rows = tile_grid(level, TILE)
        for row in range(rows):
            for col in range(columns):
                w, h = min(TILE, level.width - col * TILE), min(TILE, level.height - row * TILE)
                expected = pattern(col * TILE, row * TILE, w, h, 2 ** k)
                png = decode(reader.tile(k, col, row, "png"))
                jpeg = decode(reader.tile(k, col, row, "jpeg"))
                assert png.shape == jpeg.shape == (h, w, 3)
                if lossless:
                    assert np.array_equal(png, expected)
                else:
                    assert mean_error(png, expected) < JPEG_MEAN_ERROR
                assert mean_error(jpeg, expected) < JPEG_MEAN_ERROR


def test_edge_tiles_are_cropped_to_the_image() -> None:
    reader = open_slide("tiff", "zlib")
    assert decode(reader.tile(0, 3, 2, "png")).shape == (700 - 512, 1000 - 768, 3)
    assert decode(reader.tile(1, 1, 1, "jpeg")).shape == (350 - 256, 500 - 256, 3)
    assert decode(reader.tile(2, 0, 0, "png")).shape == (175, 250, 3)


def _stored_tile(data: bytes, page_index: int, tile_index: int) -> tuple[bytes, bytes | None]:
    """A stored tile and the JPEG tables, read with tifffile rather than our code."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[page_index]
        offset, count = page.dataoffsets[tile_index], page.databytecounts[tile_index]
        return data[offset:offset + count], page.jpegtables


@pytest.mark.parametrize("flavor", ["tiff", "ome"])
def test_interior_jpeg_tiles_pass_through_with_their_tables_merged(flavor: str) -> None:
    data = slide_bytes(flavor, "jpeg")
    stored, tables = _stored_tile(data, 0, 1 * 4 + 2)  # col 2, row 1 of a 4-column grid
    assert tables is not None and not stored.startswith(tables[:-2])
    served = open_slide(flavor, "jpeg").tile(0, 2, 1, "jpeg")
    assert served == tables[:-2] + stored[2:]
    assert mean_error(decode(served), pattern(512, 256, 256, 256)) < JPEG_MEAN_ERROR


def test_rgb_coded_jpeg_tiles_pass_through_with_an_adobe_marker() -> None:
    data = slide_bytes("svs", "jpeg")
    stored, tables = _stored_tile(data, 0, 1 * 4 + 1)
    assert tables is not None
    served = open_slide("svs", "jpeg").tile(0, 1, 1, "jpeg")
    adobe = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
    assert served == b"\xff\xd8" + adobe + tables[2:-2] + stored[2:]
    expected = pattern(256, 256, 256, 256)
    assert mean_error(decode(served), expected) < JPEG_MEAN_ERROR
    # Without the marker a decoder converts colours that were never converted.
    unmarked = tables[:-2] + stored[2:]
    assert mean_error(decode(unmarked), expected) > 20


def test_edge_and_png_tiles_are_encoded_not_passed_through() -> None:
    data = slide_bytes("tiff", "jpeg")
    stored, tables = _stored_tile(data, 0, 2 * 4 + 3)  # the bottom-right tile, padded
    assert tables is not None
    reader = open_slide("tiff", "jpeg")
    assert reader.tile(0, 3, 2, "jpeg") != tables[:-2] + stored[2:]
    assert reader.tile(0, 1, 1, "png").startswith(b"\x89PNG")


def test_standalone_jpeg_refuses_what_is_not_jpeg() -> None:
    with pytest.raises(ValueError, match="not a JPEG"):
        standalone_jpeg(b"GIF89a")
    with pytest.raises(ValueError, match="tables"):
        standalone_jpeg(b"\xff\xd8\xff\xd9", b"\xff\xd8\xff\xdb")


def test_a_region_crosses_tiles_and_is_white_outside_the_image() -> None:
    reader = open_slide("ome", "zlib")
    region = reader.region(0, 900, 600, 300, 200)
    assert region.shape == (200, 300, 3)
    assert np.array_equal(region[:100, :100], pattern(900, 600, 100, 100))
    assert (region[100:] == 255).all() and (region[:, 100:] == 255).all()
    inside = reader.region(1, 100, 50, 300, 250)
    assert np.array_equal(inside, pattern(100, 50, 300, 250, 2))
    assert (reader.region(0, -50, -50, 40, 40) == 255).all()


def test_a_region_past_the_cap_is_a_bad_request() -> None:
    reader = open_slide()
    with pytest.raises(BadRequest, match="at most 16384 pixels"):
        reader.region(0, 0, 0, 20_000, 10)
    with pytest.raises(BadRequest, match="Mpx"):
        reader.region(0, 0, 0, 10_000, 10_000)
    with pytest.raises(BadRequest):
        reader.region(0, 0, 0, 0, 10)


@pytest.mark.parametrize(("level", "col", "row"), [
    (3, 0, 0), (-1, 0, 0), (0, 4, 0), (0, 0, 3), (0, -1, 0), (2, 1, 0), (2, 0, 1),
])
def test_a_tile_outside_the_grid_is_not_found(level: int, col: int, row: int) -> None:
    with pytest.raises(NotFound):
        open_slide().tile(level, col, row, "jpeg")


def test_a_thumbnail_keeps_the_aspect_ratio_and_reads_a_small_level() -> None:
    reader = open_slide("tiff", "zlib")
    image = thumbnail(reader, 200)
    assert image.shape == (140, 200, 3)
    assert mean_error(image, resized(pattern(0, 0, 250, 175, 4), 200, 140)) < 1
    assert thumbnail(reader, 5000).shape == (700, 1000, 3)  # never enlarged
    assert thumbnail(reader, 1).shape == (1, 1, 3)


def test_a_thumbnail_of_a_slide_without_pyramid_is_reduced_block_by_block(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reader = open_tiff_slide(MemorySource(pyramid("tiff", "zlib", levels=1, associated=())))
    expected = resized(pattern(0, 0, 1000, 700), 100, 70)
    monkeypatch.setattr(tiled, "_THUMBNAIL_BLOCK_SOURCE", 100)  # blocks of 10 pixels
    image = thumbnail(reader, 100)
    assert image.shape == (70, 100, 3)
    assert mean_error(image, expected) < 3


# --- Metadata and associated images ----------------------------------------------------

def test_svs_metadata_comes_from_the_description_without_free_text() -> None:
    info = open_slide("svs", "jpeg").info
    assert info.file_format == "SVS"
    assert (info.mpp_x, info.mpp_y, info.magnification) == (0.25, 0.25, "20")
    assert info.scanner_model == "Aperio ScanScope SS1234"
    assert info.scan_date == SCAN_DATE.replace(tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert info.associated == ("thumbnail", "label", "macro")
    assert info.properties["aperio.AppMag"] == 20.0
    assert info.properties["tiff.photometric"] == "rgb"
    text = repr(info)
    assert "Jane" not in text and "b414003d" not in text and "Filename" not in text


def test_ome_metadata_comes_from_the_ome_xml() -> None:
    info = open_slide("ome", "zlib").info
    assert info.file_format == "OME-TIFF"
    assert info.mpp_x == pytest.approx(0.25) and info.mpp_y == pytest.approx(0.25)
    assert info.magnification == "20"
    assert info.scanner_model == " ".join(SCANNER)
    assert info.scan_date == SCAN_DATE
    assert info.associated == ("label", "macro")


def test_tiff_metadata_comes_from_the_tags() -> None:
    info = open_slide("tiff", "jpeg").info
    assert info.file_format == "TIFF"
    assert info.mpp_x == pytest.approx(0.25) and info.mpp_y == pytest.approx(0.25)
    assert info.magnification is None
    assert info.scanner_model == " ".join(SCANNER)
    assert info.scan_date == SCAN_DATE
    assert info.tile_size == TILE


@pytest.mark.parametrize("flavor", FLAVORS)
def test_associated_images_are_read_whole(flavor: str) -> None:
    reader = open_slide(flavor, "jpeg")
    for name in reader.info.associated:
        assert np.array_equal(reader.associated(name), associated_pattern(name))
    with pytest.raises(NotFound):
        reader.associated("overview")


def test_a_small_stripped_image_is_one_level_of_strips() -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pattern(0, 0, 500, 300), photometric="rgb", rowsperstrip=64,
                     compression="zlib", metadata=None)
    reader = open_tiff_slide(MemorySource(buffer.getvalue()))
    assert [(lv.width, lv.height) for lv in reader.info.levels] == [(500, 300)]
    assert np.array_equal(decode(reader.tile(0, 1, 1, "png")), pattern(256, 256, 244, 44))


def test_greyscale_levels_are_served_as_rgb() -> None:
    grey = pattern(0, 0, 300, 200)[:, :, 0]
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, grey, tile=(64, 64), photometric="minisblack", compression="zlib",
                     metadata=None)
    reader = open_tiff_slide(MemorySource(buffer.getvalue()))
    assert np.array_equal(reader.region(0, 0, 0, 300, 200), np.repeat(grey[:, :, None], 3, 2))


# --- The tiled base with any source ----------------------------------------------------

class _Sparse(TiledSource):
    """Two tiles stored of a 2 × 1 grid, the second missing; decoding "bad" fails."""

    def __init__(self) -> None:
        self.stored_levels = (StoredLevel(128, 64, 64, 64, 1.0, lossless=True),)

    def stored_tile(self, level: int, col: int, row: int) -> bytes | None:
        return None if col == 1 else b"ok"

    def decode(self, level: int, data: bytes) -> np.ndarray:
        return np.zeros((64, 64, 3), dtype=np.uint8)


def _reader(source: TiledSource) -> TiledSlideReader:
    from atrium.slides.model import Level, SlideInfo
    return TiledSlideReader(source, SlideInfo("TEST", (Level(128, 64, 1.0),), 64))


def test_a_shared_decoded_tile_cache_serves_repeated_regions() -> None:
    cache: ByteLru[Hashable, np.ndarray] = ByteLru(64 * 1024 * 1024)
    first = open_tiff_slide(MemorySource(slide_bytes("tiff", "zlib")), cache)
    second = open_tiff_slide(MemorySource(slide_bytes("svs", "zlib")), cache)
    region = first.region(0, 100, 100, 300, 300)
    misses = cache.misses
    assert np.array_equal(first.region(0, 100, 100, 300, 300), region)
    assert cache.misses == misses and cache.hits >= 4
    # Readers sharing the cache never see each other's tiles.
    assert np.array_equal(second.region(0, 100, 100, 300, 300), region)
    assert cache.misses > misses


def test_tiles_the_file_does_not_store_are_white() -> None:
    region = _reader(_Sparse()).region(0, 0, 0, 128, 64)
    assert (region[:, :64] == 0).all() and (region[:, 64:] == 255).all()


def test_a_tile_that_cannot_be_decoded_is_a_bad_request_naming_it() -> None:
    class Broken(_Sparse):
        def decode(self, level: int, data: bytes) -> np.ndarray:
            raise imagecodecs.JpegError("corrupt")

    with pytest.raises(BadRequest, match="damaged: stored tile 0,0 of level 0"):
        _reader(Broken()).tile(0, 0, 0, "png")


# --- Ranged reads ----------------------------------------------------------------------

class CountingSource:
    """A ByteSource that counts the bytes and reads asked of it."""

    def __init__(self, inner: StoreSource) -> None:
        self.inner, self.bytes_read, self.reads = inner, 0, 0

    @property
    def size(self) -> int:
        return self.inner.size

    def read(self, offset: int, length: int) -> bytes:
        self.bytes_read += length
        self.reads += 1
        return self.inner.read(offset, length)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[FileObjectStore, str, int]:
    root = tmp_path_factory.mktemp("slides")
    write_big_jpeg_pyramid(root / "big.tiff", 12_000, 12_000)
    store = FileObjectStore(root)
    return store, "big.tiff", store.size("big.tiff")


def test_opening_a_large_slide_and_reading_a_tile_reads_a_small_fraction(
        big_slide: tuple[FileObjectStore, str, int]) -> None:
    store, name, size = big_slide
    assert size > 40_000_000
    source = CountingSource(StoreSource(store, name, size))
    reader = open_tiff_slide(source)
    assert reader.info.levels[0].width == 12_000 and len(reader.info.levels) == 7
    opened = source.bytes_read
    tile = reader.tile(0, 20, 20, "jpeg")
    assert tile.startswith(b"\xff\xd8") and source.bytes_read - opened < 64_000
    # One 64 KiB block per level's IFD (and its tile offsets), one read for the tile.
    assert source.bytes_read < size / 50 and source.reads <= 2 * 7 + 1, \
        (source.bytes_read, source.reads)


def test_a_stored_slide_is_opened_once_for_all_its_tiles_and_closed_with_its_reader(
        big_slide: tuple[FileObjectStore, str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    store, name, size = big_slide
    opened: list[Any] = []
    real_open = FileObjectStore._open

    def counting_open(self: FileObjectStore, object_name: str) -> Any:
        opened.append(real_open(self, object_name))
        return opened[-1]

    monkeypatch.setattr(FileObjectStore, "_open", counting_open)
    reader = open_tiff_slide(StoreSource(store, name, size))
    tiles = [reader.tile(level, 0, 0, "jpeg") for level in range(len(reader.info.levels))]
    assert all(tile.startswith(b"\xff\xd8") for tile in tiles)
    assert len(opened) == 1 and not opened[0].closed
    reader.close()
    assert opened[0].closed


# --- Hostile files ---------------------------------------------------------------------

def _patch_tag(data: bytes, code: int, value: int, index: int = 0) -> bytes:
    """Set the ``index``-th value of tag ``code`` of the first IFD of a little-endian
    classic TIFF (SHORT or LONG, inline or not)."""
    out = bytearray(data)
    ifd = struct.unpack_from("<I", out, 4)[0]
    for entry in range(struct.unpack_from("<H", out, ifd)[0]):
        pos = ifd + 2 + entry * 12
        tag, kind, count = struct.unpack_from("<HHI", out, pos)
        if tag == code:
            size = 2 if kind == 3 else 4
            at = pos + 8 if count * size <= 4 else struct.unpack_from("<I", out, pos + 8)[0]
            struct.pack_into("<H" if size == 2 else "<I", out, at + index * size, value)
            return bytes(out)
    raise AssertionError(f"tag {code} not found")


def _small(compression: str = "zlib", **options: object) -> bytes:
    return pyramid("tiff", compression, width=300, height=200, tile=64,
                   associated=options.pop("associated", ("label",)), **options)


@pytest.mark.parametrize("data", [b"", b"hello", b"GIF89a" + bytes(100),
                                  b"\x89PNG\r\n\x1a\n" + bytes(100), bytes(1000)])
def test_a_file_that_is_not_a_tiff_is_an_unsupported_media_type(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType, match="SVS and OME-TIFF"):
        open_tiff_slide(MemorySource(data))


def test_a_truncated_file_is_a_bad_request() -> None:
    data = slide_bytes("tiff", "zlib")
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        last = max(o + c for o, c in zip(tif.pages[0].dataoffsets, tif.pages[0].databytecounts,
                                         strict=True))
    for cut in (len(data) // 2, last - 1, 20):
        with pytest.raises(BadRequest, match="truncated"):
            open_tiff_slide(MemorySource(data[:cut]))


def test_an_ifd_past_the_end_is_a_bad_request() -> None:
    data = bytearray(_small())
    struct.pack_into("<I", data, 4, len(data) + 1000)
    with pytest.raises(BadRequest, match="damaged or truncated"):
        open_tiff_slide(MemorySource(bytes(data)))


@pytest.mark.parametrize(("code", "value", "message"), [
    (256, MAX_SIDE + 1, "each side must be between 1 and 1000000"),
    (257, 2_000_000, "each side must be between"),
    (322, 8192, "tiles are 8192 × 64 pixels"),
])
def test_absurd_dimensions_are_refused_naming_the_limit(code: int, value: int,
                                                        message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        open_tiff_slide(MemorySource(_patch_tag(_small(), code, value)))


def test_too_many_tiles_are_refused_naming_the_limit() -> None:
    data = _small()
    for code, value in ((256, 100_000), (257, 100_000), (322, 16), (323, 16)):
        data = _patch_tag(data, code, value)
    with pytest.raises(BadRequest, match=f"tiles; the limit is {MAX_TILES}"):
        open_tiff_slide(MemorySource(data))


def test_too_many_pixels_are_refused_naming_the_limit() -> None:
    data = _patch_tag(_patch_tag(_small(), 256, 200_000), 257, 200_000)
    with pytest.raises(BadRequest, match="pixels; the limit is 20000000000"):
        open_tiff_slide(MemorySource(data))


def test_a_huge_tile_byte_count_is_refused_naming_the_limit() -> None:
    with pytest.raises(BadRequest, match=f"the limit is {MAX_TILE_BYTES}"):
        open_tiff_slide(MemorySource(_patch_tag(_small(), 325, MAX_TILE_BYTES + 1, index=2)))


def test_a_large_stripped_image_must_be_converted_to_a_tiled_pyramid() -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((16, 9000, 3), np.uint8), photometric="rgb",
                     metadata=None)
    with pytest.raises(BadRequest, match="convert it to a tiled pyramid"):
        open_tiff_slide(MemorySource(buffer.getvalue()))


@pytest.mark.parametrize(("tags", "name"), [
    ({"software": "Philips DP v1.0",
      "description": '<?xml version="1.0"?><DataObject></DataObject>'}, "Philips"),
    ({"description": '<?xml version="1.0"?><scn></scn>'}, "Leica SCN"),
])
def test_vendor_formats_are_refused_naming_what_is_supported(tags: dict[str, str],
                                                            name: str) -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((128, 128, 3), np.uint8), tile=(64, 64),
                     photometric="rgb", metadata=None, **tags)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedMediaType, match=f"{name} .* supported are .*SVS.*NDPI"):
        open_tiff_slide(MemorySource(buffer.getvalue()))


def test_an_ndpi_marker_in_a_plain_tiff_layout_is_a_damaged_file() -> None:
    # NDPI itself is read (tests/unit/test_slides_ndpi.py); a classic TIFF carrying
    # its marker without its directory layout is neither NDPI nor a plain pyramid.
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((128, 128, 3), np.uint8), tile=(64, 64),
                     photometric="rgb", metadata=None,
                     extratags=[(65420, "I", 1, 1, True), (271, "s", 0, "Hamamatsu", True)])
    with pytest.raises(BadRequest, match="NDPI"):
        open_tiff_slide(MemorySource(buffer.getvalue()))


def test_multichannel_and_sixteen_bit_images_are_unsupported() -> None:
    for image, options in [(np.zeros((128, 128), np.uint16), {"photometric": "minisblack"}),
                           (np.zeros((2, 128, 128), np.uint8), {"photometric": "minisblack",
                                                                "planarconfig": "separate"})]:
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, image, tile=(64, 64), metadata=None, **options)  # type: ignore[arg-type]
        with pytest.raises(UnsupportedMediaType):
            open_tiff_slide(MemorySource(buffer.getvalue()))


_VALID = {"zlib": _small("zlib"), "jpeg": pyramid("svs", "jpeg", width=300, height=200, tile=64,
                                                  associated=("label",))}


def _read_everything(data: bytes) -> None:
    reader = open_tiff_slide(MemorySource(data))
    for k, level in enumerate(reader.info.levels):
        columns, rows = tile_grid(level, reader.info.tile_size)
        for row in range(min(rows, 4)):
            for col in range(min(columns, 5)):
                reader.tile(k, col, row, "jpeg")
                reader.tile(k, col, row, "png")
    for name in reader.info.associated:
        reader.associated(name)
    thumbnail(reader, 64)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(_VALID)), cut=st.floats(0, 1),
       damage=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6))
def test_damaged_files_are_refused_with_a_client_error(kind: str, cut: float,
                                                       damage: list[tuple[float, int]]) -> None:
    data = bytearray(_VALID[kind])
    for where, value in damage:
        data[int(where * (len(data) - 1))] = value
    if cut < 0.3:  # a truncated upload, a third of the time
        data = data[:int(cut / 0.3 * len(data))]
    try:
        _read_everything(bytes(data))
    except ApiError as exc:
        assert 400 <= exc.status < 500, exc


def test_the_undamaged_hypothesis_inputs_read_whole() -> None:
    for data in _VALID.values():
        _read_everything(data)


def test_slides_are_read_from_object_storage(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path)
    store.put("slides/a.svs", slide_bytes("svs", "jpeg"))
    reader = open_tiff_slide(StoreSource(store, "slides/a.svs", store.size("slides/a.svs")))
    assert reader.tile(0, 1, 1, "jpeg") == open_slide("svs", "jpeg").tile(0, 1, 1, "jpeg")
    missing = StoreSource(store, "slides/b.svs", 100)
    with pytest.raises(NotFound, match="missing from storage"):
        open_tiff_slide(missing)


def test_an_ome_pyramid_stored_as_one_image_per_level_is_read() -> None:
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer, ome=True) as tif:
        for k in range(3):
            image = pattern(0, 0, *level_shape(WIDTH, HEIGHT, k), 2 ** k)
            tif.write(image, tile=(TILE, TILE), photometric="rgb", compression="zlib",
                      metadata={"Name": f"slide level {k}", "axes": "YXS"})
        tif.write(associated_pattern("label"), photometric="rgb",
                  metadata={"Name": "label", "axes": "YXS"})
    reader = open_tiff_slide(MemorySource(buffer.getvalue()))
    assert reader.info.file_format == "OME-TIFF" and reader.info.associated == ("label",)
    assert [(lv.width, lv.height) for lv in reader.info.levels] == [
        level_shape(WIDTH, HEIGHT, k) for k in range(3)]
    assert np.array_equal(decode(reader.tile(2, 0, 0, "png")), pattern(0, 0, 250, 175, 4))
