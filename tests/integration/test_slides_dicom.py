"""DICOM whole-slide images stored in Orthanc become slides: over STOW-RS through the
gateway or Orthanc's REST API, one slide per series in the study's organization,
its tiles read from the frames Orthanc stores — a JPEG tile is the stored frame
itself. A series that is not a whole pyramid is not a slide, and the log says why;
one that stops being whole stops being served."""

from __future__ import annotations

import io
import time
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from atrium.app import dicom_frames
from atrium.devenv import wait_until
from atrium.slides.dicom_wsi import open_dicom_slide
from atrium.slides.tiled import TiledSlideReader
from tests.integration.conftest import AtriumUnderTest
from tests.integration.test_api_annotations import organization_id
from tests.integration.test_api_resources import unique
from tests.support.slidegen import level_shape, pattern
from tests.support.wsigen import WsiSpec, label_image, make_wsi_series

pytestmark = pytest.mark.integration

ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def stow(atrium: AtriumUnderTest, org: str, blobs: list[bytes]) -> None:
    client = DICOMwebClient(url=f"{atrium.url}/dicom-web", headers=atrium.auth("clinician", org))
    client.store_instances([pydicom.dcmread(io.BytesIO(blob)) for blob in blobs])


def sop_uids(blobs: list[bytes]) -> list[str]:
    return [str(pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID)
            for b in blobs]


SLIDE_COLUMNS = ("id", "slide_id", "organization_id", "patient_id", "width_pixels",
                 "height_pixels", "tile_size", "pyramid_levels", "mpp_x", "mpp_y",
                 "magnification", "scanner_model", "scan_date", "file_format", "metadata",
                 "storage_path", "deleted_at")


def slide_row(atrium: AtriumUnderTest, series_uid: str) -> dict[str, Any] | None:
    rows = atrium.sql(f"SELECT {', '.join(SLIDE_COLUMNS)} FROM slides "  # noqa: S608
                      "WHERE metadata->>'series_instance_uid' = %s "
                      "ORDER BY deleted_at IS NULL DESC", (series_uid,))
    return dict(zip(SLIDE_COLUMNS, rows[0], strict=True)) if rows else None


def wait_slide(atrium: AtriumUnderTest, series_uid: str, timeout: float = 20) -> dict[str, Any]:
    def live() -> bool:
        row = slide_row(atrium, series_uid)
        return row is not None and row["deleted_at"] is None

    wait_until(live, timeout, what=f"a slide for series {series_uid}")
    row = slide_row(atrium, series_uid)
    assert row is not None
    return row


def registry_outcome(atrium: AtriumUnderTest, series_uid: str, outcome: str,
                     timeout: float = 20) -> str:
    wait_until(lambda: atrium.scalar(
        "SELECT outcome FROM wsi_series WHERE series_instance_uid = %s", (series_uid,)
    ) == outcome, timeout, what=f"series {series_uid} {outcome}")
    return str(atrium.scalar("SELECT detail FROM wsi_series WHERE series_instance_uid = %s",
                             (series_uid,)) or "")


def reader_of(atrium: AtriumUnderTest, row: dict[str, Any]) -> TiledSlideReader:
    return open_dicom_slide(row["metadata"], dicom_frames(atrium.api))


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_a_series_stored_over_stow_becomes_a_slide_of_its_study(
        atrium: AtriumUnderTest) -> None:
    org = unique("Pathology ")
    spec = WsiSpec(patient_id=unique("WSI-"), container_id=unique("S-"), levels=3)
    blobs = make_wsi_series(spec)
    stow(atrium, org, blobs)
    atrium.wait_mirrored(sop_uids(blobs))
    mirrored = time.monotonic()
    row = wait_slide(atrium, spec.series_uid)
    # Not a timing test (the machine is shared): a loose bound on "a couple of seconds".
    assert time.monotonic() - mirrored < 15

    study = atrium.sql("SELECT organization_id, patient_id FROM studies "
                       "WHERE study_instance_uid = %s", (spec.study_uid,))[0]
    assert str(row["organization_id"]) == organization_id(atrium, org) == str(study[0])
    assert row["patient_id"] == study[1]
    assert row["slide_id"] == spec.container_id
    assert row["file_format"] == "DICOM"
    assert (row["width_pixels"], row["height_pixels"]) == (spec.width, spec.height)
    assert (row["tile_size"], row["pyramid_levels"]) == (256, 3)
    assert row["mpp_x"] == pytest.approx(0.25) and row["mpp_y"] == pytest.approx(0.25)
    assert (row["magnification"], row["scanner_model"]) == ("40x", spec.model)
    assert row["scan_date"].year == 2024
    metadata = row["metadata"]
    assert metadata["series_instance_uid"] == spec.series_uid
    assert metadata["associated"] == ["label"]
    assert [(lv["width"], lv["height"]) for lv in metadata["levels"]] == [
        level_shape(spec.width, spec.height, k) for k in range(3)]
    instances = dict(atrium.sql(
        "SELECT i.sop_instance_uid, i.orthanc_id FROM instances i JOIN series se "
        "ON se.id = i.series_id WHERE se.series_instance_uid = %s", (spec.series_uid,)))
    assert [lv["orthanc_id"] for lv in metadata["dicom"]["levels"]] == [
        instances[uid] for uid in sop_uids(blobs)[:3]]

    reader = reader_of(atrium, row)
    level0 = metadata["dicom"]["levels"][0]["orthanc_id"]
    stored = atrium.api.get_bytes(f"/instances/{level0}/frames/{1 * 6 + 2}/raw")
    assert reader.tile(0, 2, 1, "jpeg") == stored  # the stored frame, byte for byte
    for level, (col, row_) in [(0, (2, 1)), (1, (1, 1)), (2, (1, 1))]:
        width, height = level_shape(spec.width, spec.height, level)
        x, y = col * 256, row_ * 256
        w, h = min(256, width - x), min(256, height - y)
        pixels = imagecodecs.jpeg8_decode(reader.tile(level, col, row_, "jpeg"))
        assert pixels.shape == (h, w, 3)
        assert mean_error(pixels, pattern(x, y, w, h, 2 ** level)) < 3
    assert mean_error(reader.associated("label"), label_image()) < 8


def test_rgb_frames_stored_over_rest_are_sent_with_the_adobe_marker(
        atrium: AtriumUnderTest) -> None:
    spec = WsiSpec(patient_id=unique("WSI-"), container_id=None, levels=2, label=False,
                   photometric="RGB")
    blobs = make_wsi_series(spec)
    for blob in blobs:
        assert atrium.upload(blob).status_code == 200
    row = wait_slide(atrium, spec.series_uid)
    assert row["slide_id"] == spec.series_uid  # no Container Identifier
    assert row["organization_id"] == atrium.scalar(
        "SELECT id FROM organizations WHERE name = 'Default'")
    level0 = row["metadata"]["dicom"]["levels"][0]["orthanc_id"]
    stored = atrium.api.get_bytes(f"/instances/{level0}/frames/{1 * 6 + 1}/raw")
    tile = reader_of(atrium, row).tile(0, 1, 1, "jpeg")
    assert tile == stored[:2] + ADOBE_RGB + stored[2:]
    assert mean_error(imagecodecs.jpeg8_decode(tile), pattern(256, 256, 256, 256, 1)) < 3


def test_a_series_missing_a_level_is_not_a_slide_and_the_log_says_why(
        atrium: AtriumUnderTest) -> None:
    spec = WsiSpec(patient_id=unique("WSI-"), container_id=unique("S-"), width=2100,
                   levels=4, skip_levels=(2,), label=False)
    blobs = make_wsi_series(spec)
    for blob in blobs:
        assert atrium.upload(blob).status_code == 200
    detail = registry_outcome(atrium, spec.series_uid, "refused")
    assert "a level is missing between 1050×550 and 263×138" in detail
    assert slide_row(atrium, spec.series_uid) is None
    wait_until(lambda: f"wsi.refused series={spec.series_uid} reason=a level is missing"
               in atrium.orthanc.logfile.read_text(errors="replace"), 10,
               what="the refusal in Orthanc's log")


def test_a_slide_whose_level_is_deleted_is_retired_and_comes_back_when_resent(
        atrium: AtriumUnderTest) -> None:
    # Levels 1, 2, 4, 8 times smaller. Without level 1 the pyramid would be 1-4-8, a
    # pyramid stepping by 4 whose last step is shorter — whole; without level 2 it
    # is 1-2-8, which skips a level.
    spec = WsiSpec(patient_id=unique("WSI-"), container_id=unique("S-"), levels=4,
                   label=False)
    blobs = make_wsi_series(spec)
    for blob in blobs:
        assert atrium.upload(blob).status_code == 200
    first = wait_slide(atrium, spec.series_uid)
    assert first["pyramid_levels"] == 4
    third = first["metadata"]["dicom"]["levels"][2]["orthanc_id"]
    assert requests.delete(f"{atrium.url}/instances/{third}", timeout=30,
                           headers=atrium.internal_headers).status_code == 200
    assert "a level is missing between 750×550 and 188×138" in registry_outcome(
        atrium, spec.series_uid, "refused")
    retired = slide_row(atrium, spec.series_uid)
    assert retired is not None and retired["deleted_at"] is not None

    assert atrium.upload(blobs[2]).status_code == 200
    again = wait_slide(atrium, spec.series_uid)
    assert again["id"] == first["id"]  # the same slide, with what was said about it
    assert atrium.scalar("SELECT count(*) FROM slides WHERE metadata->>'series_instance_uid' "
                         "= %s", (spec.series_uid,)) == 1


def test_a_series_seen_again_unchanged_is_not_rewritten(atrium: AtriumUnderTest) -> None:
    spec = WsiSpec(patient_id=unique("WSI-"), container_id=unique("S-"), levels=1,
                   label=False)
    blobs = make_wsi_series(spec)
    assert atrium.upload(blobs[0]).status_code == 200
    row = wait_slide(atrium, spec.series_uid)
    # The same file again: the mirror touches the series, the registry sees nothing new.
    assert atrium.upload(blobs[0]).status_code == 200
    touched = atrium.scalar("SELECT updated_at FROM series WHERE series_instance_uid = %s",
                            (spec.series_uid,))
    wait_until(lambda: atrium.scalar(
        "SELECT series_updated_at FROM wsi_series WHERE series_instance_uid = %s",
        (spec.series_uid,)) == touched, 20, what="the registry to see the series again")
    assert slide_row(atrium, spec.series_uid)["metadata"] == row["metadata"]  # type: ignore[index]
    assert atrium.scalar("SELECT count(*) FROM audit_log WHERE resource_id = %s",
                         (row["id"],)) == 1  # registered once


def test_the_slides_api_lists_the_series_and_serves_its_frames(atrium: AtriumUnderTest) -> None:
    from tests.integration.test_api_resources import Client

    org = unique("Pathology API ")
    spec = WsiSpec(patient_id=unique("WSI-"), container_id=unique("S-"), levels=2)
    blobs = make_wsi_series(spec)
    stow(atrium, org, blobs)
    row = wait_slide(atrium, spec.series_uid)
    clinician = Client(atrium, "clinician", org)
    listed = clinician.get("/api/slides", file_format="DICOM")
    assert listed.status_code == 200, listed.text
    assert [item["slide_id"] for item in listed.json()["items"]] == [spec.container_id]
    item = listed.json()["items"][0]
    assert (item["id"], item["width_pixels"], item["pyramid_levels"]) == (
        str(row["id"]), spec.width, 2)

    level0 = row["metadata"]["dicom"]["levels"][0]["orthanc_id"]
    tile = clinician.get(f"/api/slides/{row['id']}/tiles/0/1/1")
    assert tile.status_code == 200, tile.text
    assert tile.headers["Content-Type"] == "image/jpeg"
    assert tile.content == atrium.api.get_bytes(f"/instances/{level0}/frames/{1 * 6 + 1}/raw")
    png = clinician.get(f"/api/slides/{row['id']}/tiles/1/2/2", format="png")  # an edge
    assert png.status_code == 200, png.text
    width, height = level_shape(spec.width, spec.height, 1)
    pixels = imagecodecs.png_decode(png.content)
    assert pixels.shape == (height - 512, width - 512, 3)
    assert mean_error(pixels, pattern(512, 512, width - 512, height - 512, 2)) < 3
    label = clinician.get(f"/api/slides/{row['id']}/associated/label")
    assert label.status_code == 200, label.text


# ------------------------------------------------------- bulk annotations (ANN)

SLIDE_SHAPES: list[tuple[str, dict[str, Any]]] = [
    ("tumour", {"type": "polygon", "points": [{"x": 100, "y": 200}, {"x": 500, "y": 200.5},
                                              {"x": 300, "y": 600}]}),
    ("tumour", {"type": "polygon", "points": [{"x": 10, "y": 10}, {"x": 50, "y": 10},
                                              {"x": 50, "y": 70}]}),
    ("margin", {"type": "polyline", "points": [{"x": 1, "y": 1}, {"x": 900, "y": 12}]}),
    ("mitosis", {"type": "point", "points": [{"x": 75.5, "y": 80}]}),
    ("field", {"type": "rectangle", "x": 20, "y": 30, "width": 100, "height": 50}),
    ("nucleus", {"type": "ellipse", "center": {"x": 800, "y": 800}, "radius_x": 30,
                 "radius_y": 5}),
]


def ann_import(atrium: AtriumUnderTest, sop_uid: str, timeout: float = 30) -> tuple[str, int]:
    wait_until(lambda: atrium.scalar("SELECT count(*) FROM ann_imports "
                                     "WHERE sop_instance_uid = %s", (sop_uid,)) == 1,
               timeout, what=f"ANN {sop_uid} imported")
    row = atrium.sql("SELECT outcome, annotations_created FROM ann_imports "
                     "WHERE sop_instance_uid = %s", (sop_uid,))[0]
    return str(row[0]), int(row[1])


def as_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_floats(v) for v in value]
    return float(value) if isinstance(value, int) else value


def comparable(annotation: dict[str, Any]) -> tuple[Any, ...]:
    shape = {k: v for k, v in annotation["coordinates"].items() if k != "bounding_box"}
    if not shape.get("rotation"):
        shape.pop("rotation", None)  # an unrotated ellipse comes back with rotation 0
    return annotation["label"], annotation["target_id"], repr(as_floats(shape))


def test_slide_annotations_go_to_dicom_and_come_back_once(atrium: AtriumUnderTest) -> None:
    from tests.integration.test_api_annotations import annotate
    from tests.integration.test_api_resources import Client

    org = unique("Pathology ANN ")
    spec = WsiSpec(patient_id=unique("WSI-"), container_id=unique("S-"), levels=2,
                   label=False)
    blobs = make_wsi_series(spec)
    stow(atrium, org, blobs)
    slide = str(wait_slide(atrium, spec.series_uid)["id"])
    clinician = Client(atrium, "clinician", org)
    made = []
    for label, shape in SLIDE_SHAPES:
        answer = annotate(clinician, "slide", slide, label=label, coordinates=shape,
                          annotation_type="wsi")
        assert answer.status_code == 201, answer.text
        made.append(answer.json())
    microns = annotate(clinician, "slide", slide, label="µm", annotation_type="wsi",
                       coordinates={"type": "point", "points": [{"x": 10, "y": 20}],
                                    "units": "micrometer"})
    assert microns.status_code == 201, microns.text

    path = f"/api/slides/{slide}/annotations/dicom"
    exported = clinician.get(path)
    assert exported.status_code == 200, exported.text
    assert exported.headers["Content-Type"].startswith("application/dicom")
    assert (exported.headers["Atrium-Annotations"],
            exported.headers["Atrium-Annotations-Skipped"]) == ("7", "0")
    document = pydicom.dcmread(io.BytesIO(exported.content))
    assert (document.Modality, document.PatientID) == ("ANN", spec.patient_id)
    assert document.ReferencedSeriesSequence[0].SeriesInstanceUID == spec.series_uid
    assert len(document.AnnotationGroupSequence) == 6  # by label and graphic type

    # Stored in Orthanc: mirrored in the slide's study, imported without duplicates.
    stored = clinician.post(path)
    assert stored.status_code == 201, stored.text
    ann_uid = stored.json()["sop_instance_uid"]
    atrium.wait_mirrored([ann_uid])
    assert ann_import(atrium, ann_uid) == ("imported", 0)
    live = clinician.items("/api/annotations", target_id=slide)
    assert len(live) == 7

    for annotation in live:
        assert clinician.delete(f"/api/annotations/{annotation['id']}").status_code == 204
    # The object arrives as a viewer would send it: the annotations come back, in pixels.
    stow(atrium, org, [exported.content])
    assert ann_import(atrium, str(document.SOPInstanceUID)) == ("imported", 7)
    recreated = clinician.items("/api/annotations", target_id=slide)
    assert sorted(comparable(a) for a in recreated if a["label"] != "µm") == sorted(
        map(comparable, made))
    point = next(a for a in recreated if a["label"] == "µm")["coordinates"]
    assert point["points"] == [{"x": 40, "y": 80}]  # 0.25 µm per pixel
    assert all(a["annotation_type"] == "wsi" and a["properties"]["source"] == "dicom-ann"
               for a in recreated)

    # A later export stored again: everything in it is live already.
    later = clinician.get(path)
    stow(atrium, org, [later.content])
    later_uid = str(pydicom.dcmread(io.BytesIO(later.content)).SOPInstanceUID)
    assert ann_import(atrium, later_uid) == ("imported", 0)
    assert len(clinician.items("/api/annotations", target_id=slide)) == 7
