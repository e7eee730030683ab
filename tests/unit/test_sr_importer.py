"""What the SR importer refuses before writing: shapes that the API would refuse
too, since imported shapes never pass through the API's request schema."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from atrium.annotations.importer import SrCandidate, _import_one
from atrium.annotations.sr import ImportedMeasurement


class FoundInstance:
    """A connection on which the referenced image exists in the SR's organization;
    any INSERT would be a test failure."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def execute(self, query: str, params: Any = None) -> Any:
        self.statements.append(query)
        assert "INSERT" not in query, "nothing may be written for a refused shape"
        return self

    def fetchone(self) -> tuple[Any, ...]:
        return (uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), True)


CANDIDATE = SrCandidate(uuid.uuid4(), "orthanc-id", "1.2.3", uuid.uuid4())


def measurement(coordinates: dict[str, Any]) -> ImportedMeasurement:
    return ImportedMeasurement(label="x", coordinates=coordinates, sop_instance_uid="1.2.4",
                               tracking_uid=None, annotation_id=None)


@pytest.mark.parametrize(("coordinates", "why"), [
    ({"type": "polygon", "points": [{"x": float("nan"), "y": 0}, {"x": 1, "y": 0},
                                    {"x": 0, "y": 1}]}, "not finite"),
    ({"type": "point", "points": [{"x": float("inf"), "y": 0}]}, "not finite"),
    ({"type": "polygon", "points": [{"x": 1e12, "y": 0}, {"x": 1, "y": 0},
                                    {"x": 0, "y": 1}]}, "shape refused"),
    ({"type": "polyline", "points": [{"x": n, "y": 0} for n in range(10_001)]},
     "shape refused"),
    ({"type": "ellipse", "center": {"x": 1, "y": 1}, "radius_x": 0, "radius_y": 2},
     "shape refused"),
])
def test_a_shape_the_api_would_refuse_is_skipped_with_a_reason(
        coordinates: dict[str, Any], why: str) -> None:
    conn = FoundInstance()
    created, phi, reason = _import_one(conn, CANDIDATE, measurement(coordinates))
    assert created is None and phi is False
    assert reason is not None and why in reason
    assert len(conn.statements) == 1  # the image was looked up, nothing else


def test_a_shape_is_the_same_within_a_twentieth_of_a_pixel_and_otherwise_not() -> None:
    from atrium.annotations.importer import same_shape

    line = {"type": "polyline", "points": [{"x": 1, "y": 1}, {"x": 9.25, "y": 12}], "frame": 2}
    as_float32 = {"type": "polyline", "points": [{"x": 1.0000001, "y": 1},
                                                 {"x": 9.2500002, "y": 12.0}], "frame": 2}
    assert same_shape(line, as_float32)
    assert not same_shape(line, {**line, "frame": 3})
    assert not same_shape(line, {**line, "type": "polygon"})
    assert not same_shape(line, {"type": "polyline", "points": line["points"]})  # no frame
    assert not same_shape(line, {**line, "points": [{"x": 1, "y": 1}, {"x": 9.4, "y": 12}]})
    assert not same_shape(line, {**line, "points": line["points"][:1]})
    assert not same_shape({"closed": True}, {"closed": 1})
