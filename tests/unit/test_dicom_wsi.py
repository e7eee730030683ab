"""DICOM WSI series as slides, without Orthanc: which instances make the pyramid,
which series are refused and why, the slide's metadata, and tiles read from the
frames as Orthanc stores them."""

from __future__ import annotations

import datetime as dt
import io
from functools import cache

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from atrium.slides.dicom_wsi import (
    UnusableSeries,
    WsiSeries,
    decode_frame,
    describe_series,
    open_dicom_slide,
    passthrough_jpeg,
)
from atrium.slides.wsi_registry import dataset_from_tags
from tests.support.slidegen import level_shape, pattern
from tests.support.wsigen import (
    EXPLICIT_LE,
    JPEG_2000_LOSSLESS,
    WsiSpec,
    label_image,
    make_wsi_series,
    simplified_tags,
)

SMALL = {"width": 700, "height": 500, "tile": 128}


@cache
def series_files(**spec: object) -> tuple[bytes, ...]:
    return tuple(make_wsi_series(WsiSpec(**spec, series_uid="1.2.3.4",  # type: ignore[arg-type]
                                         study_uid="1.2.3")))


def headers(blobs: tuple[bytes, ...]) -> list[tuple[str, Dataset]]:
    """(orthanc id, header) as the registry gets them: through Orthanc's simplified
    tags, with the transfer syntax from Orthanc's metadata."""
    found = []
    for n, blob in enumerate(blobs):
        ds = pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True)
        found.append((f"orthanc-{n}", dataset_from_tags(simplified_tags(ds),
                                                        str(ds.file_meta.TransferSyntaxUID))))
    return found


def frame_reader(blobs: tuple[bytes, ...]) -> tuple[dict[tuple[str, int], bytes], object]:
    """Orthanc's ``/instances/{id}/frames/{n}/raw``, from the files; and the reader."""
    frames: dict[tuple[str, int], bytes] = {}
    for n, blob in enumerate(blobs):
        ds = pydicom.dcmread(io.BytesIO(blob))
        count = int(ds.NumberOfFrames)
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            parts = list(generate_frames(ds.PixelData, number_of_frames=count))
        else:
            size = len(ds.PixelData) // count
            parts = [ds.PixelData[i * size:(i + 1) * size] for i in range(count)]
        for index, data in enumerate(parts):
            frames[(f"orthanc-{n}", index)] = data
    return frames, lambda orthanc_id, index: frames[(orthanc_id, index)]


def test_levels_come_from_the_volume_instances_largest_first() -> None:
    series = describe_series("1.2.3.4", headers(series_files(levels=3, **SMALL)))
    assert [(lv.width, lv.height) for lv in series.info.levels] == [
        level_shape(700, 500, k) for k in range(3)]
    assert [lv.downsample for lv in series.info.levels] == pytest.approx([1, 2, 4], rel=0.01)
    assert [image.orthanc_id for image in series.levels] == ["orthanc-0", "orthanc-1",
                                                             "orthanc-2"]
    assert series.levels[0].grid == (6, 4)
    assert series.info.tile_size == 128
    assert series.info.associated == ("label",)
    assert series.associated["label"].orthanc_id == "orthanc-3"


def test_the_slide_is_described_from_the_full_resolution_instance() -> None:
    series = describe_series("1.2.3.4", headers(series_files(levels=2, **SMALL)))
    info = series.info
    assert info.file_format == "DICOM"
    assert info.mpp_x == pytest.approx(0.25) and info.mpp_y == pytest.approx(0.25)
    assert info.magnification == "40x"
    assert info.scanner_model == "Atrium TestScanner 2"
    assert info.scan_date == dt.datetime(2024, 3, 5, 9, 10, 12, 500000, tzinfo=dt.UTC)
    assert info.lossless is False
    assert series.slide_id == "S-2024-0001"
    assert series.study_instance_uid == "1.2.3"


def test_pixel_spacing_is_row_spacing_then_column_spacing() -> None:
    found = headers(series_files(levels=1, label=False, **SMALL))
    measures = found[0][1].SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.PixelSpacing = [0.0005, 0.00025]  # rows 0.5 µm apart, columns 0.25 µm
    info = describe_series("1.2.3.4", found).info
    assert (info.mpp_x, info.mpp_y) == pytest.approx((0.25, 0.5))


def test_without_a_container_identifier_the_slide_is_named_by_its_series() -> None:
    series = describe_series("1.2.3.4", headers(series_files(levels=1, container_id=None,
                                                             **SMALL)))
    assert series.slide_id == "1.2.3.4"


def test_metadata_is_enough_to_describe_the_slide_again() -> None:
    series = describe_series("1.2.3.4", headers(series_files(levels=3, **SMALL)))
    metadata = series.metadata()
    assert metadata["series_instance_uid"] == "1.2.3.4"
    assert [lv["width"] for lv in metadata["levels"]] == [700, 350, 175]
    again = WsiSeries.from_metadata(metadata)
    assert again.levels == series.levels
    assert again.associated == series.associated
    assert again.info == series.info
    with pytest.raises(ValueError, match="not the metadata of a DICOM slide"):
        WsiSeries.from_metadata({"series_instance_uid": "1.2", "levels": []})


@pytest.mark.parametrize(("levels", "skipped", "why"), [
    (4, (2,), r"a level is missing between 350×250 and 88×63"),
    (3, (0,), "no full-resolution level"),
])
def test_an_incomplete_pyramid_is_refused(levels: int, skipped: tuple[int, ...],
                                          why: str) -> None:
    with pytest.raises(UnusableSeries, match=why):
        describe_series("1.2.3.4", headers(series_files(levels=levels, skip_levels=skipped,
                                                        **SMALL)))


@pytest.mark.parametrize("skipped", [(1, 3), (1, 3, 5), (1, 3, 6)])
def test_a_pyramid_stepping_by_four_or_stopping_early_is_whole(skipped: tuple[int, ...]
                                                               ) -> None:
    series = describe_series("1.2.3.4", headers(series_files(
        width=2048, height=1024, tile=256, levels=7, skip_levels=skipped, label=False)))
    assert series.info.levels[1].downsample == 4


def test_a_wrong_frame_count_is_refused_with_the_count_expected() -> None:
    found = headers(series_files(levels=2, **SMALL))
    found[1][1].NumberOfFrames = 11
    with pytest.raises(UnusableSeries, match=r"NumberOfFrames is 11, but 350×250 in 128×128 "
                                             r"tiles makes 6"):
        describe_series("1.2.3.4", found)


def test_sparse_tiling_two_instances_of_one_level_and_no_volume_are_refused() -> None:
    found = headers(series_files(levels=2, **SMALL))
    found[1][1].DimensionOrganizationType = "TILED_SPARSE"
    with pytest.raises(UnusableSeries, match="only TILED_FULL is served"):
        describe_series("1.2.3.4", found)
    found = headers(series_files(levels=2, **SMALL))
    copy = Dataset(found[0][1])
    copy.file_meta = found[0][1].file_meta
    copy.SOPInstanceUID = "1.2.3.4.5"
    with pytest.raises(UnusableSeries, match="two VOLUME instances of 700×500"):
        describe_series("1.2.3.4", [*found, ("copy", copy)])
    with pytest.raises(UnusableSeries, match="no VOLUME instance"):
        describe_series("1.2.3.4", found[-1:])


def test_a_transfer_syntax_that_cannot_be_decoded_is_refused() -> None:
    found = headers(series_files(levels=1, **SMALL))
    found[0][1].file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2
    with pytest.raises(UnusableSeries, match="cannot be decoded here"):
        describe_series("1.2.3.4", found)


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.parametrize("photometric", ["YBR_FULL_422", "RGB"])
def test_jpeg_tiles_are_the_stored_frames_and_show_the_pattern(photometric: str) -> None:
    blobs = series_files(levels=3, photometric=photometric, **SMALL)
    frames, read = frame_reader(blobs)
    reader = open_dicom_slide(describe_series("1.2.3.4", headers(blobs)).metadata(),
                              read)  # type: ignore[arg-type]
    tile = reader.tile(0, 2, 1, "jpeg")  # interior: one stored tile
    stored = frames[("orthanc-0", 1 * 6 + 2)]  # level 0 is 6 tiles wide
    if photometric == "RGB":
        assert tile == b"\xff\xd8\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00" + stored[2:]
    else:
        assert tile == stored
    assert mean_error(imagecodecs.jpeg8_decode(tile), pattern(256, 128, 128, 128, 1)) < 3
    edge = imagecodecs.jpeg8_decode(reader.tile(1, 2, 1, "jpeg"))  # re-encoded, cropped
    assert edge.shape == (250 - 128, 350 - 256, 3)
    assert mean_error(edge, pattern(256, 128, 350 - 256, 250 - 128, 2)) < 3
    region = reader.region(0, 600, 400, 200, 150)  # across the edge: white outside
    assert mean_error(region[:100, :100], pattern(600, 400, 100, 100, 1)) < 3
    assert (region[100:, :] == 255).all() and (region[:, 100:] == 255).all()


@pytest.mark.parametrize("transfer_syntax", [EXPLICIT_LE, JPEG_2000_LOSSLESS])
def test_lossless_frames_give_the_pattern_exactly(transfer_syntax: str) -> None:
    blobs = series_files(levels=2, transfer_syntax=transfer_syntax, **SMALL)
    _, read = frame_reader(blobs)
    reader = open_dicom_slide(describe_series("1.2.3.4", headers(blobs)).metadata(),
                              read)  # type: ignore[arg-type]
    assert reader.info.lossless == (transfer_syntax == EXPLICIT_LE)  # J2K may be lossy
    assert not reader.source.stored_levels[0].is_jpeg  # never sent as stored
    png = reader.tile(1, 2, 1, "png")  # the bottom-right edge tile, cropped
    assert np.array_equal(imagecodecs.png_decode(png), pattern(256, 128, 350 - 256, 250 - 128,
                                                               2))
    assert np.array_equal(reader.associated("label"), label_image())


def test_the_label_is_an_associated_image() -> None:
    blobs = series_files(levels=1, **SMALL)
    _, read = frame_reader(blobs)
    reader = open_dicom_slide(describe_series("1.2.3.4", headers(blobs)).metadata(),
                              read)  # type: ignore[arg-type]
    assert mean_error(reader.associated("label"), label_image()) < 8  # sharp checker edges


def test_an_rgb_frame_loses_its_jfif_marker_and_gets_the_adobe_one() -> None:
    tile = pattern(0, 0, 64, 64, 3)
    rgb = imagecodecs.jpeg8_encode(tile, level=95, outcolorspace="RGB")
    adobe = rgb.find(b"\xff\xee")
    bare = rgb[:adobe] + rgb[adobe + 2 + int.from_bytes(rgb[adobe + 2:adobe + 4], "big"):]
    jfif = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    with_jfif = bare[:2] + jfif + bare[2:]
    fixed = passthrough_jpeg(with_jfif, "RGB")
    assert b"JFIF" not in fixed and fixed.count(b"Adobe") == 1
    assert mean_error(imagecodecs.jpeg8_decode(fixed), tile) < 3
    assert passthrough_jpeg(rgb, "RGB") == rgb  # already marked
    assert passthrough_jpeg(with_jfif, "YBR_FULL_422") == with_jfif


def test_a_short_uncompressed_frame_is_an_error_not_garbage() -> None:
    blobs = series_files(levels=1, transfer_syntax=EXPLICIT_LE, **SMALL)
    image = describe_series("1.2.3.4", headers(blobs)).levels[0]
    with pytest.raises(ValueError, match="bytes"):
        decode_frame(image, b"\x00" * 100)


def test_values_orthanc_gives_that_do_not_parse_are_dropped_not_fatal() -> None:
    ds = dataset_from_tags({"Rows": "256", "Columns": "not a number", "PixelSpacing": "0.5\\0.25",
                            "PrivateThing": "x", "PixelData": None,
                            "SharedFunctionalGroupsSequence": [{"PixelMeasuresSequence": [
                                {"PixelSpacing": "0.001\\0.001"}]}]},
                           "1.2.840.10008.1.2.4.50")
    assert ds.Rows == 256 and "Columns" not in ds and "PixelData" not in ds
    assert ds.PixelSpacing == [0.5, 0.25]
    assert ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing == [
        0.001, 0.001]
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
