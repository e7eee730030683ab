"""Annotations ⇄ DICOM SR (TID 1500): what goes out comes back, other tools' reports
are read, and a broken group costs that group only."""

from __future__ import annotations

import copy
import io
import uuid
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.sr.codedict import codes
from pydicom.uid import EnhancedCTImageStorage, generate_uid

from atrium.annotations.sr import (
    ExportedAnnotation,
    ImportedReport,
    build_measurement_report,
    is_measurement_report,
    read_measurement_report,
)

CT = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)


def study(images: int = 3, frames: int | None = None) -> list[pydicom.Dataset]:
    """Headers of ``images`` CT images of one study; with ``frames``, the last one is
    an Enhanced CT of that many frames."""
    out = []
    for number in range(1, images + 1):
        image = copy.deepcopy(CT)
        image.SOPInstanceUID = generate_uid()
        image.InstanceNumber = number
        out.append(image)
    if frames is not None:
        out[-1].SOPClassUID = EnhancedCTImageStorage
        out[-1].NumberOfFrames = frames
    return out


def on(image: pydicom.Dataset, coordinates: dict[str, Any], label: str = "Lesion",
       ) -> ExportedAnnotation:
    return ExportedAnnotation(uuid.uuid4(), label, coordinates, image.SOPInstanceUID,
                              image.SOPClassUID)


def as_file(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def round_trip(annotations: list[ExportedAnnotation],
               evidence: list[pydicom.Dataset]) -> ImportedReport:
    data = as_file(build_measurement_report(annotations, evidence))
    report = read_measurement_report(pydicom.dcmread(io.BytesIO(data)))
    assert report is not None
    return report


def groups_of(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
    imaging_measurements = dataset.ContentSequence[-1]
    assert imaging_measurements.ConceptNameCodeSequence[0].CodeValue == "126010"
    return list(imaging_measurements.ContentSequence)


def child(item: pydicom.Dataset, value_type: str) -> pydicom.Dataset:
    return next(c for c in item.ContentSequence if c.ValueType == value_type)


SHAPES: dict[str, dict[str, Any]] = {
    "point": {"type": "point", "points": [{"x": 1.5, "y": 2}]},
    "polyline": {"type": "polyline", "points": [{"x": 0, "y": 0}, {"x": 10.5, "y": 3},
                                                {"x": 20, "y": -4.5}]},
    "two-point line": {"type": "polyline", "points": [{"x": 3, "y": 4}, {"x": 5, "y": 6}]},
    "polyline that returns to its start": {
        "type": "polyline", "points": [{"x": 0, "y": 0}, {"x": 4, "y": 0}, {"x": 0, "y": 0}]},
    "polygon": {"type": "polygon", "points": [{"x": 1, "y": 1}, {"x": 30, "y": 2.5},
                                              {"x": 15, "y": 40}, {"x": 0.5, "y": 20}]},
    "triangle": {"type": "polygon", "points": [{"x": 0, "y": 0}, {"x": 8, "y": 0},
                                               {"x": 4, "y": 6}]},
    "rectangle": {"type": "rectangle", "x": 10, "y": 20, "width": 30, "height": 40.5},
    "wide ellipse": {"type": "ellipse", "center": {"x": 50, "y": 60.5}, "radius_x": 12,
                     "radius_y": 4},
    "tall ellipse": {"type": "ellipse", "center": {"x": 50, "y": 60}, "radius_x": 3,
                     "radius_y": 7.5},
    "circle": {"type": "ellipse", "center": {"x": 8, "y": 9}, "radius_x": 5, "radius_y": 5},
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_each_shape_comes_back_exactly(shape: dict[str, Any]) -> None:
    image = study(1)[0]
    annotation = on(image, shape)

    [measurement] = round_trip([annotation], [image]).measurements

    assert measurement.coordinates == shape
    assert measurement.sop_instance_uid == image.SOPInstanceUID
    assert measurement.annotation_id == annotation.annotation_id
    assert measurement.tracking_uid == f"2.25.{annotation.annotation_id.int}"


def test_a_report_over_several_images_and_frames_keeps_every_annotation_in_order() -> None:
    images = study(3, frames=12)
    annotations = [
        on(images[i % 3], {**shape, "frame": 7} if i % 3 == 2 else shape, label=f"#{i} {name}")
        for i, (name, shape) in enumerate(SHAPES.items())]

    report = round_trip(annotations, images)

    assert report.skipped == []
    assert [(m.label, m.coordinates, m.sop_instance_uid, m.annotation_id)
            for m in report.measurements] == [
        (a.label, a.coordinates, a.sop_instance_uid, a.annotation_id) for a in annotations]
    assert [m.coordinates.get("frame") for m in report.measurements][:3] == [None, None, 7]


def test_the_report_belongs_to_the_study_of_its_images() -> None:
    images = study(2)
    series_uid, sop_uid = generate_uid(), generate_uid()

    dataset = build_measurement_report([on(images[1], SHAPES["point"])], images,
                                       series_instance_uid=series_uid, sop_instance_uid=sop_uid,
                                       series_number=42, instance_number=3)
    report = read_measurement_report(pydicom.dcmread(io.BytesIO(as_file(dataset))))

    assert dataset.Modality == "SR"
    assert dataset.SeriesDescription == "Atrium annotations"
    assert (dataset.SeriesInstanceUID, dataset.SOPInstanceUID) == (series_uid, sop_uid)
    assert (dataset.SeriesNumber, dataset.InstanceNumber) == (42, 3)
    assert dataset.PatientID == CT.PatientID
    assert report is not None
    assert (report.sop_instance_uid, report.study_instance_uid) == (sop_uid,
                                                                    CT.StudyInstanceUID)


def test_an_image_header_without_patient_and_study_details_still_makes_a_report() -> None:
    image = study(1)[0]
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                    "ReferringPhysicianName"):
        delattr(image, keyword)

    [measurement] = round_trip([on(image, SHAPES["point"])], [image]).measurements

    assert measurement.sop_instance_uid == image.SOPInstanceUID


def test_new_uids_are_made_when_none_are_given() -> None:
    images = study(1)
    first = build_measurement_report([], images)
    second = build_measurement_report([], images)

    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert first.SeriesInstanceUID != CT.SeriesInstanceUID


LABELS = {
    "short": "Lesion",
    "exactly 64": "a" * 64,
    "255": "é" * 100 + "b" * 155,
    "non-ASCII": "Läsion 肺",
    "backslash": "left\\right",
    "surrounding spaces": "  padded  ",
    "only spaces": "   ",
    "trailing NUL": "nul\0",
    "trailing word joiner": "joiner\u2060",
    "line breaks and tabs": "two\nlines\tand\ra tab",
    "emoji": "tumour 🫁",
}


@pytest.mark.parametrize("label", LABELS.values(), ids=LABELS.keys())
def test_every_label_comes_back_exactly(label: str) -> None:
    image = study(1)[0]

    [measurement] = round_trip([on(image, SHAPES["point"], label)], [image]).measurements

    assert measurement.label == label


# an ESC in a label makes pydicom warn that it is not a charset switch; the label is kept
@pytest.mark.filterwarnings("ignore:Found unknown escape sequence")
@settings(max_examples=40, deadline=None)
@given(label=st.text(min_size=1, max_size=255))
def test_any_unicode_label_comes_back_exactly(label: str) -> None:
    image = study(1)[0]

    [measurement] = round_trip([on(image, SHAPES["rectangle"], label)], [image]).measurements

    assert measurement.label == label


HALVES = st.integers(-(2**22), 2**22).map(lambda n: n / 2)


@settings(max_examples=40, deadline=None)
@given(corners=st.lists(st.fixed_dictionaries({"x": HALVES, "y": HALVES}), min_size=3,
                        max_size=30).filter(lambda ps: ps[0] != ps[-1]))
def test_polygons_of_float32_exact_values_come_back_exactly(corners: list[dict]) -> None:
    image = study(1)[0]
    shape = {"type": "polygon", "points": corners}

    [measurement] = round_trip([on(image, shape)], [image]).measurements

    assert measurement.coordinates == shape


def test_a_value_not_exact_in_float32_comes_back_rounded_to_float32() -> None:
    image = study(1)[0]

    [measurement] = round_trip([on(image, {"type": "point", "points": [{"x": 0.1, "y": 2}]})],
                               [image]).measurements

    assert measurement.coordinates["points"][0]["x"] == float(np.float32(0.1))


def test_a_rotated_ellipse_comes_back_as_the_same_ellipse() -> None:
    image = study(1)[0]
    annotations = [
        on(image, {"type": "ellipse", "center": {"x": 20, "y": 30}, "radius_x": 10,
                   "radius_y": 4, "rotation": 30}),
        on(image, {"type": "ellipse", "center": {"x": 20, "y": 30}, "radius_x": 10,
                   "radius_y": 4, "rotation": 60}),
        on(image, {"type": "ellipse", "center": {"x": 20, "y": 30}, "radius_x": 10,
                   "radius_y": 4, "rotation": 90}),
    ]

    less, more, upright = (m.coordinates for m in round_trip(annotations, [image]).measurements)

    assert less["center"] == {"x": pytest.approx(20), "y": pytest.approx(30)}
    assert (less["radius_x"], less["radius_y"], less["rotation"]) == pytest.approx((10, 4, 30),
                                                                                   abs=1e-4)
    # beyond 45° the axis closer to horizontal is the ellipse's y axis
    assert (more["radius_x"], more["radius_y"], more["rotation"]) == pytest.approx((4, 10, -30),
                                                                                   abs=1e-4)
    # rotation 0, the default, is left out as in what clients send
    assert (upright["radius_x"], upright["radius_y"], "rotation" in upright) == (4, 10, False)


def test_bounding_box_is_not_written_and_not_read_back() -> None:
    image = study(1)[0]
    shape = {**SHAPES["polygon"], "bounding_box": {"x": 0.5, "y": 1, "width": 29.5,
                                                   "height": 39}}

    [measurement] = round_trip([on(image, shape)], [image]).measurements

    assert "bounding_box" not in measurement.coordinates
    assert measurement.coordinates == SHAPES["polygon"]


def test_an_empty_report_is_valid_and_reads_back_empty() -> None:
    data = as_file(build_measurement_report([], study(2)))

    report = read_measurement_report(pydicom.dcmread(io.BytesIO(data)))
    document = hd.sr.srread(io.BytesIO(data))

    assert report is not None
    assert (report.measurements, report.skipped) == ([], [])
    assert is_measurement_report(document)
    # TID 1500's Imaging Measurements container, with no group in it
    imaging_measurements = document.ContentSequence[-1]
    assert imaging_measurements.ConceptNameCodeSequence[0].CodeValue == "126010"
    assert "ContentSequence" not in imaging_measurements


def test_highdicom_reads_the_groups_as_viewers_would() -> None:
    images = study(2)
    annotations = [on(images[0], SHAPES["rectangle"], "Nodule"),
                   on(images[1], SHAPES["tall ellipse"], "b" * 100)]

    document = hd.sr.srread(io.BytesIO(as_file(build_measurement_report(annotations, images))))
    groups = document.content.get_planar_roi_measurement_groups()

    assert isinstance(document, hd.sr.Comprehensive3DSR)
    assert [g.tracking_uid for g in groups] == [f"2.25.{a.annotation_id.int}"
                                                for a in annotations]
    assert [g.finding_type.meaning for g in groups] == ["Nodule", "b" * 63 + "…"]
    assert [g.roi.graphic_type.value for g in groups] == ["POLYLINE", "ELLIPSE"]
    assert groups[1].roi.value.tolist() == [[50, 52.5], [50, 67.5], [47, 60], [53, 60]]


def test_pydicoms_own_sr_is_not_a_measurement_report() -> None:
    dataset = pydicom.dcmread(get_testdata_file("test-SR.dcm"))

    assert is_measurement_report(dataset) is False
    assert read_measurement_report(dataset) is None
    assert read_measurement_report(CT) is None


def other_vendor_report(images: list[pydicom.Dataset]) -> pydicom.Dataset:
    """A TID 1500 report as another tool writes it with highdicom's defaults: a
    circle and a closed outline as regions, a length inferred from an open line."""
    def source(image: pydicom.Dataset) -> hd.sr.SourceImageForRegion:
        return hd.sr.SourceImageForRegion(image.SOPClassUID, image.SOPInstanceUID)

    circle = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid="1.2.3.4", identifier="Region 1"),
        referenced_region=hd.sr.ImageRegion("CIRCLE", np.array([[10, 10], [13, 14]]),
                                            source(images[0])),
        finding_type=codes.SCT.Nodule)
    outline = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid="2.25.12345", identifier="Region 2"),
        referenced_region=hd.sr.ImageRegion(
            "POLYLINE", np.array([[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]),
            source(images[1])))
    length = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid="1.2.3.5", identifier="Ruler"),
        measurements=[hd.sr.Measurement(
            name=codes.SCT.Length, value=5.0, unit=codes.UCUM.Millimeter,
            referenced_coordinates=[hd.sr.CoordinatesForMeasurement(
                "POLYLINE", np.array([[1, 2], [4, 6]]), source(images[1]))])],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(images[1])])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(),
        procedure_reported=codes.cid100.CTUnspecifiedBodyRegion,
        imaging_measurements=[circle, outline, length])
    return hd.sr.Comprehensive3DSR(evidence=images, content=report[0],
                                   series_instance_uid=hd.UID(), series_number=1,
                                   sop_instance_uid=hd.UID(), instance_number=1,
                                   manufacturer="Elsewhere")


def test_another_tools_report_is_read_without_atrium_ids() -> None:
    images = study(2)
    data = as_file(other_vendor_report(images))

    report = read_measurement_report(pydicom.dcmread(io.BytesIO(data)))

    assert report is not None and report.skipped == []
    circle, outline, ruler = report.measurements
    assert [m.annotation_id for m in report.measurements] == [None, None, None]
    assert [m.tracking_uid for m in report.measurements] == ["1.2.3.4", "2.25.12345",
                                                             "1.2.3.5"]
    assert (circle.label, circle.sop_instance_uid) == ("Nodule", images[0].SOPInstanceUID)
    assert circle.coordinates == {"type": "ellipse", "center": {"x": 10, "y": 10},
                                  "radius_x": 5, "radius_y": 5}
    # without Atrium's marker a closed outline is a polygon, even a rectangular one
    assert outline.label == "Region 2"
    assert outline.coordinates == {"type": "polygon", "points": [
        {"x": 0, "y": 0}, {"x": 10, "y": 0}, {"x": 10, "y": 10}, {"x": 0, "y": 10}]}
    assert (ruler.label, ruler.sop_instance_uid) == ("Ruler", images[1].SOPInstanceUID)
    assert ruler.coordinates == {"type": "polyline",
                                 "points": [{"x": 1, "y": 2}, {"x": 4, "y": 6}]}


def test_an_atrium_group_whose_tracking_uid_is_not_from_an_id_has_no_annotation_id() -> None:
    image = study(1)[0]
    dataset = pydicom.dcmread(io.BytesIO(as_file(build_measurement_report(
        [on(image, SHAPES["point"])], [image]))))
    [group] = groups_of(dataset)
    child(group, "UIDREF").UID = "1.2.840.99"

    report = read_measurement_report(dataset)

    assert report is not None
    [measurement] = report.measurements
    assert (measurement.tracking_uid, measurement.annotation_id) == ("1.2.840.99", None)
    assert measurement.label == "Lesion"


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")  # the malformed value, on purpose
def test_a_broken_group_is_skipped_with_a_reason_and_the_rest_is_read() -> None:
    images = study(1)
    annotations = [on(images[0], SHAPES[name], name) for name in
                   ("point", "polygon", "rectangle", "polyline", "wide ellipse", "circle")]
    dataset = pydicom.dcmread(io.BytesIO(as_file(build_measurement_report(annotations,
                                                                          images))))
    no_image, odd, multipoint, no_region, bad_value, fine = groups_of(dataset)
    del child(no_image, "SCOORD").ContentSequence
    child(odd, "SCOORD").GraphicData = [1.0, 2.0, 3.0, 4.0, 5.0]
    child(multipoint, "SCOORD").GraphicType = "MULTIPOINT"
    no_region.ContentSequence = [c for c in no_region.ContentSequence
                                 if c.ValueType != "SCOORD"]
    reference = child(child(bad_value, "SCOORD"), "IMAGE").ReferencedSOPSequence[0]
    frame_number = pydicom.tag.Tag("ReferencedFrameNumber")
    reference[frame_number] = RawDataElement(frame_number, "IS", 4, b"one ", 0, True, True)

    report = read_measurement_report(dataset)

    assert report is not None
    assert [m.label for m in report.measurements] == ["circle"]
    assert report.skipped == [
        "Measurement group 1 was skipped: its region names no image (no SELECTED FROM "
        "image reference).",
        "Measurement group 2 was skipped: its region has 5 coordinate values; pairs "
        "(column, row) are needed.",
        "Measurement group 3 was skipped: its region is a MULTIPOINT, which no Atrium "
        "shape holds.",
        "Measurement group 4 was skipped: it has no image region (SCOORD) to import.",
        "Measurement group 5 was skipped: it holds a malformed value.",
    ]


def test_an_annotation_on_an_image_outside_the_evidence_is_refused() -> None:
    images = study(2)
    stray = on(study(1)[0], SHAPES["point"])

    with pytest.raises(ValueError, match="not in the evidence"):
        build_measurement_report([on(images[0], SHAPES["point"]), stray], images)


@pytest.mark.parametrize(("coordinates", "message"), [
    ({"type": "circle", "center": {"x": 1, "y": 1}, "radius": 2}, "has shape 'circle'"),
    ({"type": "point", "points": []}, "exactly 1 points"),
    ({"type": "polygon", "points": [{"x": 0, "y": 0}, {"x": 1, "y": 1}]}, "at least 3"),
    ({"type": "rectangle", "x": 0, "y": 0, "width": 0, "height": 1}, "width must be greater"),
    ({"type": "ellipse", "center": {"x": 0, "y": 0}, "radius_x": 1, "radius_y": float("nan")},
     "radius_y must be a finite number"),
    ({"type": "point", "points": [{"x": 1, "y": 2}], "frame": 2}, "frame must be an integer"),
    ({"type": "point", "points": [{"x": 1, "y": 2}], "units": "micrometer"},
     "pixel coordinates only"),
])
def test_a_shape_a_report_cannot_hold_is_refused(coordinates: dict[str, Any],
                                                 message: str) -> None:
    image = study(1)[0]

    with pytest.raises(ValueError, match=message):
        build_measurement_report([on(image, coordinates)], [image])


def test_evidence_from_two_studies_is_refused() -> None:
    images = study(2)
    images[1].StudyInstanceUID = generate_uid()

    with pytest.raises(ValueError, match="one report, one study"):
        build_measurement_report([], images)


def test_a_frame_within_a_multiframe_image_is_accepted_and_one_beyond_is_refused() -> None:
    image = study(1, frames=3)[0]

    [measurement] = round_trip([on(image, {**SHAPES["point"], "frame": 3})],
                               [image]).measurements
    with pytest.raises(ValueError, match="from 1 to 3"):
        build_measurement_report([on(image, {**SHAPES["point"], "frame": 4})], [image])

    assert measurement.coordinates["frame"] == 3
