"""Annotation shapes: the bounding box the server computes, what it refuses beyond
the request schema, and which shapes suit which annotation types and targets."""

from __future__ import annotations

import math

import pytest

from atrium.annotations.geometry import bounding_box, check_shape_for, normalized
from atrium.errors import BadRequest


def points(*xy: tuple[float, float]) -> list[dict[str, float]]:
    return [{"x": x, "y": y} for x, y in xy]


@pytest.mark.parametrize(("shape", "box"), [
    ({"type": "point", "points": points((3, 4))}, (3, 4, 0, 0)),
    ({"type": "polyline", "points": points((5, 9), (-1, 2), (0, 11))}, (-1, 2, 6, 9)),
    ({"type": "polygon", "points": points((0, 0), (4, 1), (2, 3))}, (0, 0, 4, 3)),
    ({"type": "rectangle", "x": 1, "y": 2, "width": 3, "height": 4}, (1, 2, 3, 4)),
    ({"type": "ellipse", "center": {"x": 10, "y": 20}, "radius_x": 4, "radius_y": 2},
     (6, 18, 8, 4)),
    ({"type": "time_range", "start": 2, "end": 5.5, "channels": [3, 1, 7]}, (2, 1, 3.5, 6)),
    ({"type": "time_range", "start": 0, "end": 1}, (0, 0, 1, 0)),
])
def test_bounding_boxes(shape: dict, box: tuple[float, float, float, float]) -> None:
    assert bounding_box(shape) == dict(zip(("x", "y", "width", "height"), box, strict=True))


def test_a_rotated_ellipse_box_holds_every_point_of_its_outline() -> None:
    shape = {"type": "ellipse", "center": {"x": 0, "y": 0}, "radius_x": 5, "radius_y": 1,
             "rotation": 30}
    box = bounding_box(shape)
    theta = math.radians(30)
    outline = [(5 * math.cos(t) * math.cos(theta) - math.sin(t) * math.sin(theta),
                5 * math.cos(t) * math.sin(theta) + math.sin(t) * math.cos(theta))
               for t in (i * math.tau / 3600 for i in range(3600))]
    xs, ys = [p[0] for p in outline], [p[1] for p in outline]
    assert box["x"] == pytest.approx(min(xs), abs=1e-4)
    assert box["x"] + box["width"] == pytest.approx(max(xs), abs=1e-4)
    assert box["y"] == pytest.approx(min(ys), abs=1e-4)
    assert box["height"] == pytest.approx(max(ys) - min(ys), abs=1e-4)


def test_normalized_replaces_a_client_box_and_drops_a_repeated_closing_corner() -> None:
    sent = {"type": "polygon", "points": points((0, 0), (2, 0), (2, 2), (0, 0)),
            "bounding_box": {"x": -99, "y": -99, "width": 1, "height": 1}, "frame": 2}
    kept = normalized(sent)
    assert kept["points"] == points((0, 0), (2, 0), (2, 2))
    assert kept["bounding_box"] == {"x": 0, "y": 0, "width": 2, "height": 2}
    assert kept["frame"] == 2
    assert sent["bounding_box"]["x"] == -99  # the caller's dict is left alone


@pytest.mark.parametrize("shape", [
    {"type": "polygon", "points": points((0, 0), (1, 1), (0, 0))},
    {"type": "polygon", "points": points((0, 0), (1, 1), (1, 1), (0, 0))},
    {"type": "time_range", "start": 3, "end": 3},
    {"type": "time_range", "start": 4, "end": 3},
    {"type": "time_range", "start": 0, "end": 3, "channels": [1, 2, 1]},
])
def test_degenerate_shapes_are_refused(shape: dict) -> None:
    with pytest.raises(BadRequest) as refused:
        normalized(shape)
    assert refused.value.extra["errors"][0]["field"].startswith("coordinates.")


POLYGON = {"type": "polygon", "points": points((0, 0), (1, 0), (0, 1))}
RANGE = {"type": "time_range", "start": 0, "end": 1}


@pytest.mark.parametrize(("annotation_type", "target", "shape"), [
    ("dicom", "study", POLYGON), ("dicom", "series", POLYGON), ("dicom", "instance", POLYGON),
    ("wsi", "slide", {**POLYGON, "units": "micrometer"}), ("signal", "recording", RANGE),
    ("general", "study", None), ("general", "recording", RANGE), ("general", "slide", POLYGON),
])
def test_suitable_combinations_pass(annotation_type: str, target: str, shape: dict | None
                                    ) -> None:
    check_shape_for(annotation_type, target, shape)


@pytest.mark.parametrize(("annotation_type", "target", "shape", "field"), [
    ("dicom", "slide", POLYGON, "annotation_type"),
    ("wsi", "instance", POLYGON, "annotation_type"),
    ("signal", "study", RANGE, "annotation_type"),
    ("signal", "recording", POLYGON, "coordinates.type"),
    ("dicom", "instance", RANGE, "coordinates.type"),
    ("general", "recording", POLYGON, "coordinates.type"),
    ("dicom", "instance", {**POLYGON, "units": "micrometer"}, "coordinates.units"),
    ("dicom", "study", None, "coordinates"),
])
def test_unsuitable_combinations_name_the_field(annotation_type: str, target: str,
                                                shape: dict | None, field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        check_shape_for(annotation_type, target, shape)
    assert refused.value.extra["errors"][0]["field"] == field
