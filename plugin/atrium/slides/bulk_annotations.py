"""A slide's annotations as a DICOM Microscopy Bulk Simple Annotations object (ANN),
and back. Pure: no Orthanc, no database.

Export (:func:`build_bulk_annotations`) makes one annotation group per label and
graphic type, in 2D coordinates of the slide's full-resolution image (its level-0
VOLUME instance, the object's source image): ``x`` the column, ``y`` the row,
(0, 0) the top-left corner of the top-left pixel, as Atrium keeps image shapes.
Shapes in micrometres are converted with the slide's pixel spacing (and skipped
when it has none). Atrium shape → graphic type: point → POINT, polyline →
POLYLINE, polygon → POLYGON, rectangle → RECTANGLE (its four corners), ellipse →
ELLIPSE (the end points of its major, then its minor axis).

Each group also carries, in a private block (``ATRIUM ANNOTATIONS``, group
0x0071), the annotations' ids (16 bytes each, in order) and the full label, which
LO's 64 characters may cut. Viewers ignore it; the importer uses it to skip what
was exported from annotations that are still live, as the SR importer does.

Import (:func:`read_bulk_annotations`) accepts 2D objects relative to the total
pixel matrix of any level of the slide (coordinates are scaled to level 0). A
rectangle whose corners are not axis-aligned becomes a polygon.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

__all__ = ["ANN_SOP_CLASS", "ExportedAnnotation", "ImportedAnnotation", "ImportedObject",
           "build_bulk_annotations", "read_bulk_annotations"]

ANN_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.91.1"
PRIVATE_GROUP = 0x0071
PRIVATE_CREATOR = "ATRIUM ANNOTATIONS"
_IDS, _LABEL = 0x01, 0x02  # element offsets in the private block
_MAX_LO = 64

# A neutral coded meaning: Atrium's labels are free text, carried by the group label.
CATEGORY = Code("91723000", "SCT", "Anatomical Structure")
PROPERTY = Code("85756007", "SCT", "Tissue")

_GRAPHIC_TYPES = {"point": "POINT", "polyline": "POLYLINE", "polygon": "POLYGON",
                  "rectangle": "RECTANGLE", "ellipse": "ELLIPSE"}


@dataclass(frozen=True)
class ExportedAnnotation:
    """One live annotation of the slide, as stored (coordinates in pixels or µm)."""

    annotation_id: uuid.UUID
    label: str | None
    coordinates: dict[str, Any]


def _pixels(coordinates: Mapping[str, Any], mpp: tuple[float | None, float | None]
            ) -> dict[str, Any] | None:
    """The shape in level-0 pixels; None for micrometres without a pixel spacing."""
    if coordinates.get("units", "pixel") == "pixel":
        return dict(coordinates)
    mpp_x, mpp_y = mpp
    if not mpp_x or not mpp_y:
        return None
    sx, sy = 1 / mpp_x, 1 / mpp_y

    def point(p: Mapping[str, float]) -> dict[str, float]:
        return {"x": p["x"] * sx, "y": p["y"] * sy}

    shape = {k: v for k, v in coordinates.items() if k not in ("units", "bounding_box")}
    if "points" in shape:
        shape["points"] = [point(p) for p in shape["points"]]
    if shape["type"] == "rectangle":
        shape.update(x=shape["x"] * sx, y=shape["y"] * sy, width=shape["width"] * sx,
                     height=shape["height"] * sy)
    if shape["type"] == "ellipse":
        if sx != sy and shape.get("rotation"):
            return None  # a rotated ellipse is no ellipse on anisotropic pixels
        shape.update(center=point(shape["center"]), radius_x=shape["radius_x"] * sx,
                     radius_y=shape["radius_y"] * sy)
    return shape


def _graphic_data(shape: Mapping[str, Any]) -> np.ndarray:
    kind = shape["type"]
    if kind in ("point", "polyline", "polygon"):
        return np.array([[p["x"], p["y"]] for p in shape["points"]], dtype=np.float64)
    if kind == "rectangle":
        x, y, w, h = shape["x"], shape["y"], shape["width"], shape["height"]
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)
    theta = math.radians(shape.get("rotation", 0))
    along_x = np.array([math.cos(theta), math.sin(theta)])
    along_y = np.array([-math.sin(theta), math.cos(theta)])
    center = np.array([shape["center"]["x"], shape["center"]["y"]])
    rx, ry = shape["radius_x"], shape["radius_y"]
    (r1, d1), (r2, d2) = ((rx, along_x), (ry, along_y)) if rx >= ry else \
        ((ry, along_y), (rx, along_x))  # DICOM lists the major axis first
    return np.array([center - r1 * d1, center + r1 * d1, center - r2 * d2, center + r2 * d2],
                    dtype=np.float64)


def _lo(text: str) -> str:
    """``text`` cut to what an LO holds: 64 bytes (in UTF-8), whole characters."""
    return text.encode()[:_MAX_LO].decode(errors="ignore")


def _private(group: Dataset, ids: Sequence[uuid.UUID], label: str | None) -> None:
    block = group.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(_IDS, "OB", b"".join(i.bytes for i in ids))
    block.add_new(_LABEL, "UT", label or "")


def build_bulk_annotations(
    annotations: Sequence[ExportedAnnotation], source_image: Dataset, *,
    mpp: tuple[float | None, float | None], series_instance_uid: str, series_number: int,
    sop_instance_uid: str, manufacturer: str = "Atrium", software_version: str = "1",
) -> tuple[hd.ann.MicroscopyBulkSimpleAnnotations, int]:
    """The ANN object of ``annotations`` on ``source_image`` (the header of the
    slide's level-0 instance) and how many annotations it could not carry (not an
    image shape, or micrometres with no pixel spacing ``mpp``)."""
    groups: dict[tuple[str | None, str], list[tuple[uuid.UUID, np.ndarray]]] = {}
    skipped = 0
    for annotation in annotations:
        kind = annotation.coordinates.get("type") if annotation.coordinates else None
        shape = _pixels(annotation.coordinates, mpp) if kind in _GRAPHIC_TYPES else None
        if shape is None:
            skipped += 1
            continue
        groups.setdefault((annotation.label, _GRAPHIC_TYPES[shape["type"]]), []).append(
            (annotation.annotation_id, _graphic_data(shape)))
    made = []
    for number, ((label, graphic_type), members) in enumerate(groups.items(), start=1):
        group = hd.ann.AnnotationGroup(
            number=number, uid=hd.UID(), label=_lo(label or "annotation"),
            annotated_property_category=CATEGORY, annotated_property_type=PROPERTY,
            graphic_type=graphic_type, graphic_data=[data for _, data in members],
            algorithm_type="MANUAL", description=label if label and _lo(label) != label
            else None)
        _private(group, [annotation_id for annotation_id, _ in members], label)
        made.append(group)
    document = hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[source_image], annotation_coordinate_type="2D", annotation_groups=made,
        series_instance_uid=series_instance_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid, instance_number=1, manufacturer=manufacturer,
        manufacturer_model_name="Atrium", software_versions=software_version,
        device_serial_number="1", content_label="ATRIUM_ANN",
        content_description="Annotations of the slide, exported by Atrium")
    return document, skipped


# ------------------------------------------------------------------ import

@dataclass(frozen=True)
class ImportedAnnotation:
    label: str | None
    coordinates: dict[str, Any]  # level-0 pixels
    annotation_id: uuid.UUID | None  # the Atrium annotation it was exported from
    group_uid: str


@dataclass
class ImportedObject:
    """What an ANN object holds: the series and image its coordinates refer to."""

    series_instance_uids: list[str]
    image_sop_instance_uid: str | None
    annotations: list[ImportedAnnotation] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _shape(graphic_type: str, points: np.ndarray, scale: tuple[float, float]
           ) -> dict[str, Any] | None:
    xy = [{"x": float(x) * scale[0], "y": float(y) * scale[1]} for x, y in points[:, :2]]
    if graphic_type in ("POINT", "POLYLINE", "POLYGON"):
        if graphic_type == "POLYGON" and len(xy) > 3 and xy[0] == xy[-1]:
            xy.pop()  # some writers close the ring; Atrium does not
        return {"type": graphic_type.lower(), "points": xy}
    if len(xy) != 4:
        return None
    if graphic_type == "RECTANGLE":
        xs, ys = sorted({p["x"] for p in xy}), sorted({p["y"] for p in xy})
        if len(xs) == 2 and len(ys) == 2:
            return {"type": "rectangle", "x": xs[0], "y": ys[0], "width": xs[1] - xs[0],
                    "height": ys[1] - ys[0]}
        return {"type": "polygon", "points": xy}
    if graphic_type == "ELLIPSE":
        (ax, ay), (bx, by), (cx, cy), (dx, dy) = ((p["x"], p["y"]) for p in xy)
        rotation = math.degrees(math.atan2(by - ay, bx - ax))
        rotation = rotation - 180 if rotation > 90 else rotation + 180 if rotation <= -90 \
            else rotation
        return {"type": "ellipse", "center": {"x": (ax + bx) / 2, "y": (ay + by) / 2},
                "radius_x": math.hypot(bx - ax, by - ay) / 2,
                "radius_y": math.hypot(dx - cx, dy - cy) / 2, "rotation": rotation}
    return None


def _atrium_block(group: Dataset) -> tuple[list[uuid.UUID], str | None] | None:
    try:
        block = group.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        raw = bytes(block[_IDS].value or b"")
        label = str(block[_LABEL].value or "") if _LABEL in block else None
    except KeyError:
        return None
    ids = [uuid.UUID(bytes=raw[i:i + 16]) for i in range(0, len(raw) - 15, 16)]
    return ids, label


def read_bulk_annotations(ds: Dataset, level_scales: Mapping[str, tuple[float, float]]
                          ) -> ImportedObject:
    """The annotations of an ANN object, in level-0 pixels.

    ``level_scales`` maps the SOP Instance UID of each level of the slide to its
    (x, y) downsample; the object's coordinates are relative to the image it
    references. Groups that cannot be placed are listed in ``skipped``.

    Raises
    ------
    ValueError
        If ``ds`` is not a Microscopy Bulk Simple Annotations object.
    """
    if str(ds.get("SOPClassUID", "")) != ANN_SOP_CLASS:
        raise ValueError("not a Microscopy Bulk Simple Annotations object")
    series = [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence") or []
              if "SeriesInstanceUID" in item]
    images = [str(item.ReferencedSOPInstanceUID)
              for item in ds.get("ReferencedImageSequence") or []
              if "ReferencedSOPInstanceUID" in item]
    found = ImportedObject(series, images[0] if images else None)
    if str(ds.get("AnnotationCoordinateType", "")) != "2D":
        found.skipped.append("3D coordinates (the slide's frame of reference) are not imported")
        return found
    if str(ds.get("PixelOriginInterpretation", "VOLUME") or "VOLUME") != "VOLUME":
        found.skipped.append("coordinates relative to single frames are not imported")
        return found
    scale = level_scales.get(found.image_sop_instance_uid or "")
    if scale is None:
        found.skipped.append("the referenced image is not a level of the slide")
        return found
    document = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(ds, copy=True)
    for group in document.get_annotation_groups():
        graphic_type = group.graphic_type.value
        try:
            shapes = group.get_graphic_data("2D")
        except (ValueError, AttributeError) as error:
            found.skipped.append(f"group {group.label!r}: unreadable coordinates ({error})")
            continue
        atrium = _atrium_block(group)
        ids, label = atrium if atrium else ([], group.label or None)
        for n, points in enumerate(shapes):
            shape = _shape(graphic_type, np.asarray(points, dtype=np.float64), scale) \
                if np.all(np.isfinite(points)) else None
            if shape is None:
                found.skipped.append(f"group {group.label!r} annotation {n + 1}: "
                                     f"{graphic_type} not importable")
                continue
            found.annotations.append(ImportedAnnotation(
                label=label or None, coordinates=shape,
                annotation_id=ids[n] if n < len(ids) else None,
                group_uid=str(group.AnnotationGroupUID)))
    return found
