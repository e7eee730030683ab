"""Annotation coordinates: the shapes Atrium keeps, what each needs, and the
bounding box the server computes for every one of them.

Image shapes live in pixel space as DICOM's spatial coordinates do — ``x`` is the
column, ``y`` the row, ``(0, 0)`` the top-left corner of the top-left pixel — so a
shape goes to and from a DICOM SR unchanged. A whole-slide image may instead be
annotated in micrometres (``"units": "micrometer"``). A signal annotation is a time
range in seconds from the start of the recording, optionally on some channels.

The request schema (``atrium.api.annotations``) checks each shape's fields; this
module adds what a schema cannot say (a range's end after its start, a polygon
closed on itself) and derives the bounding box, which always replaces any a
client sent: the viewport index is built on it, so it must be the server's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from atrium.errors import BadRequest, FieldError

__all__ = ["IMAGE_SHAPES", "MAX_COORDINATE", "MAX_POINTS", "SIGNAL_SHAPES", "bounding_box",
           "check_shape_for", "normalized"]

IMAGE_SHAPES = ("point", "polyline", "polygon", "rectangle", "ellipse")
SIGNAL_SHAPES = ("time_range",)
MAX_POINTS = 10_000
"""Points in one shape: a pathologist's detailed outline stays well below it, and a
viewport page of shapes stays a few megabytes at most."""
MAX_COORDINATE = 1e9
"""|coordinate| bound: beyond any image, and far from where ``x + width`` overflows."""

# What each annotation type may be attached to and which shapes it carries.
_TYPE_TARGETS = {
    "dicom": ("study", "series", "instance"),
    "wsi": ("slide",),
    "signal": ("recording",),
}


def _fail(field: str, message: str) -> BadRequest:
    return BadRequest.invalid([FieldError("body", field, message)])


def check_shape_for(annotation_type: str, target_type: str,
                    coordinates: dict[str, Any] | None) -> None:
    """Refuse an annotation whose type, target and shape do not go together: a
    ``dicom`` annotation is on a study, series or instance, ``wsi`` on a slide,
    ``signal`` on a recording; ``general`` on anything. Shapes follow the target:
    time ranges on recordings, image shapes elsewhere, micrometres on slides only.
    Only ``general`` annotations may have no coordinates (a note on a study)."""
    allowed = _TYPE_TARGETS.get(annotation_type)
    if allowed is not None and target_type not in allowed:
        raise _fail("annotation_type", f"a {annotation_type} annotation goes on a "
                    f"{' or '.join(allowed)}, not a {target_type}; use 'general' for notes")
    if coordinates is None:
        if annotation_type != "general":
            raise _fail("coordinates", f"are required for a {annotation_type} annotation")
        return
    shape = coordinates["type"]
    if target_type == "recording":
        if shape not in SIGNAL_SHAPES:
            raise _fail("coordinates.type", "must be 'time_range' on a recording")
    elif shape not in IMAGE_SHAPES:
        raise _fail("coordinates.type",
                    f"must be one of {', '.join(IMAGE_SHAPES)} on a {target_type}")
    if coordinates.get("units", "pixel") != "pixel" and target_type != "slide":
        raise _fail("coordinates.units", "must be 'pixel' except on a slide")


def normalized(coordinates: dict[str, Any]) -> dict[str, Any]:
    """The coordinates to store: checked beyond the schema, a polygon's repeated
    closing point dropped, and ``bounding_box`` set by the server."""
    shape = dict(coordinates)
    shape.pop("bounding_box", None)
    kind = shape["type"]
    if kind == "polygon":
        points = list(shape["points"])
        if len(points) > 3 and _same(points[0], points[-1]):
            points.pop()
        if len({(p["x"], p["y"]) for p in points}) < 3:
            raise _fail("coordinates.points", "a polygon needs at least 3 distinct corners")
        shape["points"] = points
    elif kind == "time_range":
        if not shape["end"] > shape["start"]:
            raise _fail("coordinates.end", "must be after 'start'")
        channels = shape.get("channels")
        if channels is not None and len(set(channels)) != len(channels):
            raise _fail("coordinates.channels", "must not repeat a channel")
    shape["bounding_box"] = bounding_box(shape)
    return shape


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return bool(a["x"] == b["x"] and a["y"] == b["y"])


def _box(x0: float, y0: float, x1: float, y1: float) -> dict[str, float]:
    return {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}


def _points_box(points: Sequence[dict[str, float]]) -> dict[str, float]:
    xs = [p["x"] for p in points]
    ys = [p["y"] for p in points]
    return _box(min(xs), min(ys), max(xs), max(ys))


def bounding_box(shape: dict[str, Any]) -> dict[str, float]:
    """The smallest axis-aligned rectangle holding the shape, in its own units.

    A time range's box spans its seconds along ``x`` and its channels along ``y``
    (all channels: ``y`` 0 and ``height`` 0), so signal annotations are found by
    the same intersection query as image ones.
    """
    kind = shape["type"]
    if kind in ("point", "polyline", "polygon"):
        return _points_box(shape["points"])
    if kind == "rectangle":
        return _box(shape["x"], shape["y"], shape["x"] + shape["width"],
                    shape["y"] + shape["height"])
    if kind == "ellipse":
        theta = math.radians(shape.get("rotation", 0))
        rx, ry = shape["radius_x"], shape["radius_y"]
        half_w = math.hypot(rx * math.cos(theta), ry * math.sin(theta))
        half_h = math.hypot(rx * math.sin(theta), ry * math.cos(theta))
        cx, cy = shape["center"]["x"], shape["center"]["y"]
        return _box(cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    if kind == "time_range":
        channels = shape.get("channels") or [0]
        return _box(shape["start"], min(channels), shape["end"], max(channels))
    raise ValueError(f"unknown shape {kind!r}")
