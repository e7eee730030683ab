"""A slide's annotations as a DICOM Microscopy Bulk Simple Annotations object and
back: every shape comes back as it was, in level-0 pixels; what DICOM cannot
carry is counted, not lost silently."""

from __future__ import annotations

import io
import uuid
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from atrium.slides.bulk_annotations import (
    ExportedAnnotation,
    build_bulk_annotations,
    read_bulk_annotations,
)
from tests.support.wsigen import WsiSpec, make_wsi_series

SHAPES: list[tuple[str | None, dict[str, Any]]] = [
    ("tumour", {"type": "polygon", "points": [{"x": 10.5, "y": 20}, {"x": 50, "y": 20.25},
                                              {"x": 30, "y": 60}]}),
    ("tumour", {"type": "polygon", "points": [{"x": 1, "y": 1}, {"x": 5, "y": 1},
                                              {"x": 5, "y": 7}, {"x": 1, "y": 6}]}),
    ("length", {"type": "polyline", "points": [{"x": 1, "y": 1}, {"x": 900, "y": 12}]}),
    (None, {"type": "point", "points": [{"x": 7.5, "y": 8}]}),
    ("box", {"type": "rectangle", "x": 2, "y": 3, "width": 10, "height": 5}),
    ("cyst", {"type": "ellipse", "center": {"x": 80, "y": 80}, "radius_x": 30,
              "radius_y": 5, "rotation": 30}),
    ("Läsion " + "x" * 70, {"type": "point", "points": [{"x": 1, "y": 2}]}),
]


@pytest.fixture(scope="module")
def source() -> pydicom.Dataset:
    blob = make_wsi_series(WsiSpec(width=512, height=256, tile=256, levels=2, label=False))[0]
    return pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True)


def round_trip(annotations: list[ExportedAnnotation], source: pydicom.Dataset,
               mpp: tuple[float | None, float | None] = (0.25, 0.25),
               scales: dict[str, tuple[float, float]] | None = None) -> Any:
    document, skipped = build_bulk_annotations(
        annotations, source, mpp=mpp, series_instance_uid=generate_uid(), series_number=9902,
        sop_instance_uid=generate_uid())
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    stored = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    scales = scales or {str(source.SOPInstanceUID): (1.0, 1.0)}
    return stored, skipped, read_bulk_annotations(stored, scales)


def test_every_shape_comes_back_with_its_label_and_id(source: pydicom.Dataset) -> None:
    made = [ExportedAnnotation(uuid.uuid4(), label, shape) for label, shape in SHAPES]
    stored, skipped, found = round_trip(made, source)
    assert skipped == 0
    assert stored.Modality == "ANN"
    assert found.series_instance_uids == [str(source.SeriesInstanceUID)]
    # One group per label and graphic type.
    assert len(stored.AnnotationGroupSequence) == 6
    back = {a.annotation_id: a for a in found.annotations}
    assert set(back) == {a.annotation_id for a in made}
    for annotation in made:
        assert back[annotation.annotation_id].label == annotation.label
        got = back[annotation.annotation_id].coordinates
        if annotation.coordinates["type"] == "ellipse":
            assert got["center"] == annotation.coordinates["center"]
            assert (got["radius_x"], got["radius_y"], got["rotation"]) == pytest.approx(
                (30, 5, 30))
        else:
            assert got == annotation.coordinates


def test_micrometres_become_pixels_and_a_slide_without_spacing_skips_them(
        source: pydicom.Dataset) -> None:
    made = [ExportedAnnotation(uuid.uuid4(), "µm", {
        "type": "rectangle", "x": 10, "y": 5, "width": 2.5, "height": 1, "units": "micrometer"})]
    _, skipped, found = round_trip(made, source, mpp=(0.25, 0.5))
    assert skipped == 0
    assert found.annotations[0].coordinates == {"type": "rectangle", "x": 40, "y": 10,
                                                "width": 10, "height": 2}
    _, skipped, found = round_trip(made + [ExportedAnnotation(uuid.uuid4(), "px", SHAPES[3][1])],
                                   source, mpp=(None, None))
    assert skipped == 1 and len(found.annotations) == 1


def test_a_major_axis_along_y_is_the_same_ellipse(source: pydicom.Dataset) -> None:
    tall = {"type": "ellipse", "center": {"x": 50, "y": 50}, "radius_x": 5, "radius_y": 20}
    _, _, found = round_trip([ExportedAnnotation(uuid.uuid4(), "tall", tall)], source)
    got = found.annotations[0].coordinates
    assert (got["radius_x"], got["radius_y"]) == pytest.approx((20, 5))
    assert abs(got["rotation"]) == pytest.approx(90) and -90 < got["rotation"] <= 90


def test_coordinates_on_a_lower_level_are_scaled_to_level_zero(source: pydicom.Dataset) -> None:
    point = {"type": "point", "points": [{"x": 10, "y": 20}]}
    _, _, found = round_trip([ExportedAnnotation(uuid.uuid4(), "p", point)], source,
                             scales={str(source.SOPInstanceUID): (2.0, 2.0)})
    assert found.annotations[0].coordinates["points"] == [{"x": 20, "y": 40}]
    _, _, elsewhere = round_trip([ExportedAnnotation(uuid.uuid4(), "p", point)], source,
                                 scales={"1.2.3": (1.0, 1.0)})
    assert elsewhere.annotations == []
    assert elsewhere.skipped == ["the referenced image is not a level of the slide"]
