"""Atrium annotations to and from DICOM Structured Reports (TID 1500, Measurement Report).

Writing goes through highdicom, so the report is built by its validating templates;
reading walks the content tree with plain pydicom, so a report from another tool
(OHIF/dcmjs, highdicom defaults, …) is read as far as it can be and a group that
cannot be read is named in :attr:`ImportedReport.skipped` instead of failing the
whole report. Nothing here touches Orthanc or the database.

What a written report holds — a Comprehensive 3D SR with one TID 1410 "Planar ROI
Measurements" group per annotation, in the order given:

* **Region**: the group's Image Region (111030, DCM) SCOORD, SELECTED FROM the
  annotated image (with Referenced Frame Number when the annotation has a
  ``frame``). highdicom accepts every graphic type Atrium needs as a region except
  MULTIPOINT, which Atrium does not produce, so no shape hides in a measurement.
  What the region means is said by the group's Geometric purpose of region
  (130400, DCM), a code of CID 219: a ``point`` is a POINT, "Representative
  point"; a ``polyline`` is an open POLYLINE, "Centerline"; a ``polygon`` is a
  POLYLINE closed by repeating its first point, a ``rectangle`` the closed POLYLINE
  of its corners (x, y), (x+w, y), (x+w, y+h), (x, y+h), (x, y), an ``ellipse`` an
  ELLIPSE — all three "Outline".
* **Shape kind and identity**: the Tracking Identifier is
  ``Atrium annotation:<type>`` (the marker by which the reader knows a group is
  Atrium's, and tells a rectangle from a polygon); the Tracking Unique Identifier
  is ``2.25.<annotation id as an integer>``.
* **Label**: the Finding (121071, DCM) is a code of the local scheme ``99ATRIUM``
  whose meaning is the label, as far as a Long String can carry it (64 characters,
  no backslash or control character) — the text a viewer shows for a finding. The exact
  label is a TEXT item "Annotation label" (``LABEL``, ``99ATRIUM``) in the group;
  TID 1410 is extensible. DICOM pads text with spaces, so a label ending in a space
  or NUL (or in U+2060 WORD JOINER) is written with one WORD JOINER appended,
  which the reader removes: every label comes back exactly.

No annotations: the report is still a TID 1500 Measurement Report, its Imaging
Measurements container without children (highdicom insists on one group, the
template does not).

Ellipses: ``rotation`` is the angle in degrees from the image x axis to the
ellipse's own x axis, turning towards the image y axis (as the rows go down, that
is clockwise on screen). DICOM lists the major axis first, so when
``radius_y > radius_x`` the ellipse's y axis is written first. The reader calls
the axis closer to horizontal the x axis, so rotation comes back in (-45, 45]:
an axis-aligned ellipse returns exactly as written, a rotated one as the same
ellipse, possibly with its radii swapped and its rotation turned by 90°.

Numbers: SCOORD Graphic Data is 32-bit float, so a coordinate not exact in
float32 (0.1, 1/3, …) comes back rounded to the nearest float32; integers and
halves below 2**23 in magnitude are exact. Coordinates come back as ``float``.

Reading: a group (125007, DCM) anywhere under the root's containers is read from
its first SCOORD, directly in the group (TID 1410) or nested, e.g. INFERRED FROM
by a length (TID 300), and that SCOORD's SELECTED FROM image. POINT → point,
open POLYLINE → polyline, closed POLYLINE → polygon (a rectangle when the marker
says so and the corners are axis-aligned; a polyline when the marker says so — an
Atrium polyline may end where it began), CIRCLE → ellipse with equal radii,
ELLIPSE → ellipse. MULTIPOINT, 3D-only groups, groups without an image, a
malformed value: the group is skipped, with a sentence saying why. The label is
the "Annotation label" text, else the Finding's meaning, else the Tracking
Identifier, else ``Imported <type>``; cut to 255 characters.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import re
import unicodedata
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes

log = logging.getLogger(__name__)

__all__ = ["ExportedAnnotation", "ImportedMeasurement", "ImportedReport",
           "build_measurement_report", "is_measurement_report", "read_measurement_report"]

MARKER = "Atrium annotation:"
"""Prefix of the Tracking Identifier of every group Atrium writes."""
SERIES_DESCRIPTION = "Atrium annotations"
MAX_LABEL = 255

_SCHEME = "99ATRIUM"
_PAD_GUARD = "\u2060"  # WORD JOINER: invisible, keeps DICOM from eating trailing spaces
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_DEVICE_UID = pydicom.uid.generate_uid(entropy_srcs=["atrium", "annotations", "sr"])

# Concept names, as (CodeValue, CodingSchemeDesignator).
_REPORT = ("126000", "DCM")
_GROUP = ("125007", "DCM")
_TRACKING_ID = ("112039", "DCM")
_TRACKING_UID = ("112040", "DCM")
_FINDING = ("121071", "DCM")
_LABEL = ("LABEL", _SCHEME)

Point = tuple[float, float]
Coordinates = dict[str, Any]


@dataclass(frozen=True)
class ExportedAnnotation:
    """One annotation to write: its id becomes the Tracking Unique Identifier."""

    annotation_id: uuid.UUID
    label: str
    coordinates: Coordinates
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class ImportedMeasurement:
    """One measurement group read back; ``annotation_id`` only for Atrium's own."""

    label: str
    coordinates: Coordinates
    sop_instance_uid: str
    tracking_uid: str | None
    annotation_id: uuid.UUID | None


@dataclass(frozen=True)
class ImportedReport:
    """A TID 1500 report read back; ``skipped`` says why each unread group was."""

    sop_instance_uid: str
    study_instance_uid: str
    measurements: list[ImportedMeasurement]
    skipped: list[str]


# -- export: shapes ------------------------------------------------------------------

def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} must be a number, not {value!r}.")
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise ValueError(f"{field} must be a finite number a 32-bit float can hold.")
    return float(value)


def _positive(coordinates: Coordinates, field: str) -> float:
    value = _number(coordinates.get(field), field)
    if value <= 0:
        raise ValueError(f"{field} must be greater than 0, not {value}.")
    return value


def _point(value: Any, field: str) -> Point:
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be an object with x and y.")
    return _number(value.get("x"), f"{field}.x"), _number(value.get("y"), f"{field}.y")


def _points(coordinates: Coordinates, at_least: int, at_most: int | None = None) -> list[Point]:
    points = coordinates.get("points")
    points = points if isinstance(points, list) else []
    if len(points) < at_least or (at_most is not None and len(points) > at_most):
        wanted = f"exactly {at_least}" if at_most == at_least else f"at least {at_least}"
        raise ValueError(f"A {coordinates['type']} needs {wanted} points.")
    return [_point(p, f"points[{i}]") for i, p in enumerate(points)]


def _cos_sin(degrees: float) -> Point:
    """cos and sin, exact at multiples of 90° so axis-aligned ellipses stay exact."""
    quarter, rest = divmod(degrees, 90.0)
    if rest == 0:
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[int(quarter) % 4]
    radians = math.radians(degrees)
    return math.cos(radians), math.sin(radians)


def _encode_point(c: Coordinates) -> tuple[str, list[Point], hd.sr.CodedConcept]:
    return "POINT", _points(c, 1, 1), codes.DCM.RepresentativePoint


def _encode_polyline(c: Coordinates) -> tuple[str, list[Point], hd.sr.CodedConcept]:
    return "POLYLINE", _points(c, 2), codes.DCM.Centerline


def _encode_polygon(c: Coordinates) -> tuple[str, list[Point], hd.sr.CodedConcept]:
    points = _points(c, 3)
    return "POLYLINE", [*points, points[0]], codes.DCM.Outline


def _encode_rectangle(c: Coordinates) -> tuple[str, list[Point], hd.sr.CodedConcept]:
    x, y = _number(c.get("x"), "x"), _number(c.get("y"), "y")
    right, bottom = x + _positive(c, "width"), y + _positive(c, "height")
    return "POLYLINE", [(x, y), (right, y), (right, bottom), (x, bottom), (x, y)], \
        codes.DCM.Outline


def _encode_ellipse(c: Coordinates) -> tuple[str, list[Point], hd.sr.CodedConcept]:
    cx, cy = _point(c.get("center"), "center")
    rx, ry = _positive(c, "radius_x"), _positive(c, "radius_y")
    cos, sin = _cos_sin(_number(c.get("rotation", 0), "rotation"))
    x_axis = [(cx - rx * cos, cy - rx * sin), (cx + rx * cos, cy + rx * sin)]
    y_axis = [(cx + ry * sin, cy - ry * cos), (cx - ry * sin, cy + ry * cos)]
    major_first = x_axis + y_axis if rx >= ry else y_axis + x_axis
    return "ELLIPSE", major_first, codes.DCM.Outline


_ENCODERS: dict[str, Callable[[Coordinates], tuple[str, list[Point], hd.sr.CodedConcept]]] = {
    "point": _encode_point, "polyline": _encode_polyline, "polygon": _encode_polygon,
    "rectangle": _encode_rectangle, "ellipse": _encode_ellipse,
}


# -- export: labels and groups -------------------------------------------------------

def _long_string(label: str) -> str:
    """The label as a Code Meaning (LO): no backslash or control character, ≤ 64."""
    text = "".join(" " if unicodedata.category(ch) == "Cc" else ch
                   for ch in label.replace("\\", "/")).strip()
    text = text or "Annotation"
    return text if len(text) <= 64 else text[:63] + "…"


def _finding(label: str) -> hd.sr.CodedConcept:
    """A local code per distinct label: the same label, the same code."""
    value = "L" + hashlib.sha256(label.encode("utf-8")).hexdigest()[:15]
    return hd.sr.CodedConcept(value, _SCHEME, _long_string(label))


def _guard(label: str) -> str:
    return label + _PAD_GUARD if label.endswith((" ", "\0", _PAD_GUARD)) else label


def _unguard(text: str) -> str:
    return text[:-1] if text.endswith(_PAD_GUARD) else text


def _frame(coordinates: Coordinates, image: pydicom.Dataset) -> list[int] | None:
    frame = coordinates.get("frame")
    if frame is None:
        return None
    frames = int(image.get("NumberOfFrames") or 1)
    if isinstance(frame, bool) or not isinstance(frame, int) or not 1 <= frame <= frames:
        raise ValueError(f"frame must be an integer from 1 to {frames} for image "
                         f"{image.SOPInstanceUID}, not {frame!r}.")
    return [frame]


def _group(annotation: ExportedAnnotation, image: pydicom.Dataset,
           ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    coordinates = annotation.coordinates
    kind = coordinates.get("type")
    encode = _ENCODERS.get(kind) if isinstance(kind, str) else None
    if encode is None:
        raise ValueError(f"Annotation {annotation.annotation_id} has shape {kind!r}; "
                         f"a report holds {', '.join(_ENCODERS)}.")
    if coordinates.get("units", "pixel") != "pixel":
        raise ValueError(f"Annotation {annotation.annotation_id} is in "
                         f"{coordinates['units']}s; a report holds pixel coordinates only.")
    if not 1 <= len(annotation.label) <= MAX_LABEL:
        raise ValueError(f"Annotation {annotation.annotation_id} has a label of "
                         f"{len(annotation.label)} characters; 1 to {MAX_LABEL} fit.")
    graphic_type, points, purpose = encode(coordinates)
    region = hd.sr.ImageRegion(
        graphic_type=graphic_type,
        graphic_data=np.array(points, dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion(
            image.SOPClassUID, image.SOPInstanceUID, _frame(coordinates, image)))
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=f"2.25.{annotation.annotation_id.int}", identifier=f"{MARKER}{kind}"),
        referenced_region=region,
        finding_type=_finding(annotation.label),
        geometric_purpose=purpose)
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=hd.sr.CodedConcept(*_LABEL, "Annotation label"), value=_guard(annotation.label),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def _images_by_uid(evidence: Sequence[pydicom.Dataset]) -> dict[str, pydicom.Dataset]:
    if not evidence:
        raise ValueError("A report needs at least one evidence image: the patient and "
                         "study attributes come from it.")
    images: dict[str, pydicom.Dataset] = {}
    study = evidence[0].get("StudyInstanceUID")
    for image in evidence:
        missing = [k for k in ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID",
                               "StudyInstanceUID") if not image.get(k)]
        if missing:
            raise ValueError(f"An evidence dataset lacks {', '.join(missing)}.")
        if image.StudyInstanceUID != study:
            raise ValueError(f"Evidence image {image.SOPInstanceUID} is from study "
                             f"{image.StudyInstanceUID}, not {study}: one report, one study.")
        images[image.SOPInstanceUID] = image
    return images


def _study_header(image: pydicom.Dataset) -> pydicom.Dataset:
    """The first evidence image with the patient/study attributes highdicom reads
    (Type 2, so allowed empty) present — an Orthanc header may omit some."""
    header = copy.deepcopy(image)
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def _without_groups(report: hd.sr.MeasurementReport) -> hd.sr.MeasurementReport:
    """Empty the Imaging Measurements container. highdicom wants at least one group,
    TID 1500 does not: a study without annotations is an empty report."""
    for item in report[0].ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImagingMeasurements.value:
            del item.ContentSequence
    return report


def build_measurement_report(
    annotations: Sequence[ExportedAnnotation],
    evidence: Sequence[pydicom.Dataset],
    *,
    series_instance_uid: str | None = None,
    series_number: int = 9901,
    instance_number: int = 1,
    sop_instance_uid: str | None = None,
    manufacturer: str = "Atrium",
) -> pydicom.Dataset:
    """A Comprehensive 3D SR (TID 1500) holding one measurement group per annotation.

    Parameters
    ----------
    annotations
        In the order the groups should have; may be empty.
    evidence
        Headers (no pixel data needed) of every image the annotations refer to, all
        of one study; the patient and study attributes come from the first.
    series_instance_uid, sop_instance_uid
        New UIDs when not given.

    Raises
    ------
    ValueError
        No evidence, evidence of several studies, an annotation on an image not in
        ``evidence`` (or with another SOP Class UID), an unknown shape, a shape
        missing a field, a label of 0 or more than 255 characters.
    """
    images = _images_by_uid(evidence)
    groups = []
    for annotation in annotations:
        image = images.get(annotation.sop_instance_uid)
        if image is None:
            raise ValueError(f"Annotation {annotation.annotation_id} is on image "
                             f"{annotation.sop_instance_uid}, which is not in the evidence.")
        if image.SOPClassUID != annotation.sop_class_uid:
            raise ValueError(f"Annotation {annotation.annotation_id} names SOP class "
                             f"{annotation.sop_class_uid}; its image is {image.SOPClassUID}.")
        groups.append(_group(annotation, image))
    first = next(iter(images.values()))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_DEVICE_UID, name=manufacturer, manufacturer_name=manufacturer))
    placeholder = [] if groups else [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="placeholder"),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(first)])]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.cid100.ImagingProcedure,
        imaging_measurements=groups or placeholder)
    if not groups:
        report = _without_groups(report)
    return hd.sr.Comprehensive3DSR(
        evidence=[_study_header(first), *images.values()],
        content=report[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=True,
        series_description=SERIES_DESCRIPTION,
        specific_character_set="ISO_IR 192",
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=_SCHEME, name="Atrium annotation labels",
            responsible_organization=manufacturer)],
    )


# -- import ------------------------------------------------------------------------

class _Unreadable(Exception):
    """A measurement group Atrium cannot turn into an annotation; the reason."""


def _concept(item: pydicom.Dataset) -> tuple[str, str] | None:
    names = item.get("ConceptNameCodeSequence")
    if not names:
        return None
    code = names[0]
    return (str(code.get("CodeValue") or code.get("LongCodeValue") or ""),
            str(code.get("CodingSchemeDesignator") or ""))


def _children(item: pydicom.Dataset) -> list[pydicom.Dataset]:
    return list(item.get("ContentSequence") or [])


def is_measurement_report(dataset: pydicom.Dataset) -> bool:
    """Whether the dataset's root follows TID 1500: its template identifier is
    1500, or its concept name is (126000, DCM) "Imaging Measurement Report"."""
    templates = dataset.get("ContentTemplateSequence") or []
    if any(str(t.get("TemplateIdentifier", "")).strip() == "1500" for t in templates):
        return True
    return _concept(dataset) == _REPORT


def _groups(item: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    for child in _children(item):
        if child.get("ValueType") == "CONTAINER":
            if _concept(child) == _GROUP:
                yield child
            else:
                yield from _groups(child)


def _first(item: pydicom.Dataset, value_type: str) -> pydicom.Dataset | None:
    """The first descendant of that value type, breadth first: a group's own region
    before a SCOORD a measurement was inferred from."""
    queue = deque(_children(item))
    while queue:
        child = queue.popleft()
        if child.get("ValueType") == value_type:
            return child
        queue.extend(_children(child))
    return None


def _text(item: pydicom.Dataset, concept: tuple[str, str]) -> str | None:
    for child in _children(item):
        if _concept(child) == concept:
            if child.get("ValueType") == "CODE":
                codes_ = child.get("ConceptCodeSequence")
                return str(codes_[0].get("CodeMeaning") or "") if codes_ else None
            value = child.get("TextValue", child.get("UID"))
            return None if value is None else str(value)
    return None


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return [value] if isinstance(value, int | float | str) else list(value)


def _image(scoord: pydicom.Dataset) -> tuple[str, int | None]:
    for child in _children(scoord):
        refs = child.get("ReferencedSOPSequence") if child.get("ValueType") == "IMAGE" else None
        if refs and refs[0].get("ReferencedSOPInstanceUID"):
            frames = [int(f) for f in _as_list(refs[0].get("ReferencedFrameNumber"))]
            if len(frames) > 1:
                raise _Unreadable(f"its region is on {len(frames)} frames; an Atrium "
                                  "annotation lies on one.")
            return str(refs[0].ReferencedSOPInstanceUID), frames[0] if frames else None
    raise _Unreadable("its region names no image (no SELECTED FROM image reference).")


def _graphic_points(scoord: pydicom.Dataset) -> list[Point]:
    values = [float(v) for v in _as_list(scoord.get("GraphicData"))]
    if not values or len(values) % 2:
        raise _Unreadable(f"its region has {len(values)} coordinate values; pairs "
                          "(column, row) are needed.")
    if not all(math.isfinite(v) for v in values):
        raise _Unreadable("its region has a coordinate that is not a finite number.")
    return list(zip(values[::2], values[1::2], strict=True))


def _xy(point: Point) -> dict[str, float]:
    return {"x": point[0], "y": point[1]}


def _count(points: list[Point], at_least: int, exactly: bool, graphic: str) -> None:
    if len(points) < at_least or (exactly and len(points) != at_least):
        wanted = "exactly" if exactly else "at least"
        raise _Unreadable(f"its {graphic} has {len(points)} points, {wanted} {at_least} needed.")


def _read_point(points: list[Point], kind: str | None) -> Coordinates:
    _count(points, 1, True, "POINT")
    return {"type": "point", "points": [_xy(points[0])]}


def _rectangle(points: list[Point]) -> Coordinates | None:
    if len(points) != 5:
        return None
    xs, ys = sorted({p[0] for p in points}), sorted({p[1] for p in points})
    corners = {(x, y) for x in xs for y in ys}
    if len(xs) != 2 or len(ys) != 2 or set(points) != corners:
        return None
    return {"type": "rectangle", "x": xs[0], "y": ys[0],
            "width": xs[1] - xs[0], "height": ys[1] - ys[0]}


def _read_polyline(points: list[Point], kind: str | None) -> Coordinates:
    _count(points, 2, False, "POLYLINE")
    if kind == "polyline" or points[0] != points[-1]:
        return {"type": "polyline", "points": [_xy(p) for p in points]}
    if kind == "rectangle" and (rectangle := _rectangle(points)) is not None:
        return rectangle
    if len(points) < 4:
        raise _Unreadable("its closed POLYLINE has fewer than 3 corners.")
    return {"type": "polygon", "points": [_xy(p) for p in points[:-1]]}


def _read_circle(points: list[Point], kind: str | None) -> Coordinates:
    _count(points, 2, True, "CIRCLE")
    radius = math.dist(points[0], points[1])
    if radius <= 0:
        raise _Unreadable("its CIRCLE has radius 0.")
    return _ellipse(_xy(points[0]), radius, radius, 0.0)


def _axis(a: Point, b: Point) -> tuple[float, float]:
    """Half-length and direction in (-90, 90] degrees of the axis from a to b."""
    angle = math.degrees(math.atan2(b[1] - a[1], b[0] - a[0]))
    angle = angle - 180 if angle > 90 else angle + 180 if angle <= -90 else angle
    return math.dist(a, b) / 2, angle + 0.0


def _read_ellipse(points: list[Point], kind: str | None) -> Coordinates:
    _count(points, 4, True, "ELLIPSE")
    axes = [_axis(points[0], points[1]), _axis(points[2], points[3])]
    if min(half for half, _ in axes) <= 0:
        raise _Unreadable("its ELLIPSE has an axis of length 0.")
    # the axis closer to horizontal is x; at a tie (±45°) the one at +45°
    (radius_x, rotation), (radius_y, _) = sorted(axes, key=lambda a: (abs(a[1]), -a[1]))
    (x0, y0), (x1, y1) = points[0], points[1]
    return _ellipse({"x": (x0 + x1) / 2, "y": (y0 + y1) / 2}, radius_x, radius_y, rotation)


def _ellipse(center: dict[str, float], radius_x: float, radius_y: float, rotation: float
             ) -> Coordinates:
    """An ellipse as Atrium keeps it: ``rotation`` only when it is not 0, its default."""
    shape: Coordinates = {"type": "ellipse", "center": center, "radius_x": radius_x,
                          "radius_y": radius_y}
    if rotation:
        shape["rotation"] = rotation
    return shape


def _read_multipoint(points: list[Point], kind: str | None) -> Coordinates:
    raise _Unreadable("its region is a MULTIPOINT, which no Atrium shape holds.")


_READERS: dict[str, Callable[[list[Point], str | None], Coordinates]] = {
    "POINT": _read_point, "POLYLINE": _read_polyline, "CIRCLE": _read_circle,
    "ELLIPSE": _read_ellipse, "MULTIPOINT": _read_multipoint,
}

_ATRIUM_UID = re.compile(r"2\.25\.(0|[1-9][0-9]{0,38})")


def _annotation_id(tracking_uid: str | None) -> uuid.UUID | None:
    match = _ATRIUM_UID.fullmatch(tracking_uid or "")
    if match is None or int(match[1]) >= 1 << 128:
        return None
    return uuid.UUID(int=int(match[1]))


def _read_group(group: pydicom.Dataset) -> ImportedMeasurement:
    identifier = _text(group, _TRACKING_ID)
    tracking_uid = _text(group, _TRACKING_UID)
    kind = identifier[len(MARKER):] if identifier and identifier.startswith(MARKER) else None
    scoord = _first(group, "SCOORD")
    if scoord is None:
        if _first(group, "SCOORD3D") is not None:
            raise _Unreadable("its region is in 3D patient coordinates (SCOORD3D); "
                              "Atrium annotations are in image pixels.")
        raise _Unreadable("it has no image region (SCOORD) to import.")
    sop_instance_uid, frame = _image(scoord)
    graphic_type = str(scoord.get("GraphicType") or "")
    read = _READERS.get(graphic_type)
    if read is None:
        raise _Unreadable(f"its region has graphic type {graphic_type!r}.")
    coordinates = read(_graphic_points(scoord), kind)
    if frame is not None:
        coordinates["frame"] = frame
    atrium_label = _text(group, _LABEL)
    label = (_unguard(atrium_label) if atrium_label else None) \
        or _text(group, _FINDING) or identifier or f"Imported {coordinates['type']}"
    return ImportedMeasurement(
        label=label[:MAX_LABEL], coordinates=coordinates, sop_instance_uid=sop_instance_uid,
        tracking_uid=tracking_uid,
        annotation_id=_annotation_id(tracking_uid) if kind in _ENCODERS else None)


def read_measurement_report(dataset: pydicom.Dataset) -> ImportedReport | None:
    """The annotations in a TID 1500 report, in document order; ``None`` when the
    dataset is not one. A group that cannot be read is left out and named in
    ``skipped`` — malformed content never raises."""
    if not is_measurement_report(dataset):
        return None
    measurements: list[ImportedMeasurement] = []
    skipped: list[str] = []
    for number, group in enumerate(_groups(dataset), 1):
        try:
            measurements.append(_read_group(group))
        except _Unreadable as reason:
            skipped.append(f"Measurement group {number} was skipped: {reason}")
        except Exception:  # a value pydicom cannot decode must cost one group, not the report
            log.warning("sr_group_unreadable sop_instance_uid=%s group=%d",
                        dataset.get("SOPInstanceUID"), number, exc_info=True)
            skipped.append(f"Measurement group {number} was skipped: it holds a "
                           "malformed value.")
    return ImportedReport(
        sop_instance_uid=str(dataset.get("SOPInstanceUID") or ""),
        study_instance_uid=str(dataset.get("StudyInstanceUID") or ""),
        measurements=measurements, skipped=skipped)
