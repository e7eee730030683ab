"""The DICOM SR round trip (TID 1500): a study's annotations exported as an SR,
stored in Orthanc without duplicating them, and — once deleted — recreated from
the SR arriving over STOW-RS as OHIF's "save measurements" sends it; each SR is
imported once, and SRs of other templates are left alone."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from atrium.annotations.sr import read_measurement_report
from atrium.devenv import wait_until
from tests.integration.conftest import AtriumUnderTest
from tests.integration.test_api_annotations import annotate, polygon, upload_into
from tests.integration.test_api_resources import Client, is_problem, unique
from tests.support.dicomgen import StudySpec

pytestmark = pytest.mark.integration

SHAPES: list[tuple[str, dict[str, Any]]] = [
    ("Läsion 肺", polygon((10, 20), (50, 20.5), (30, 60))),
    ("length", {"type": "polyline", "points": [{"x": 1, "y": 1}, {"x": 9, "y": 12}]}),
    ("seed", {"type": "point", "points": [{"x": 7.5, "y": 8}]}),
    ("box", {"type": "rectangle", "x": 2, "y": 3, "width": 10, "height": 5}),
    ("cyst", {"type": "ellipse", "center": {"x": 8, "y": 8}, "radius_x": 3, "radius_y": 5}),
]


def stow(atrium: AtriumUnderTest, org: str, blob: bytes) -> None:
    client = DICOMwebClient(url=f"{atrium.url}/dicom-web", headers=atrium.auth("clinician", org))
    client.store_instances([pydicom.dcmread(io.BytesIO(blob))])


def sr_import(atrium: AtriumUnderTest, sop_uid: str, timeout: float = 30) -> tuple[str, int]:
    """Wait until the importer has looked at the SR; its outcome and count."""
    def done() -> bool:
        return atrium.scalar("SELECT count(*) FROM sr_imports WHERE sop_instance_uid = %s",
                             (sop_uid,)) == 1
    wait_until(done, timeout, what=f"SR {sop_uid} imported")
    row = atrium.sql("SELECT outcome, annotations_created FROM sr_imports "
                     "WHERE sop_instance_uid = %s", (sop_uid,))[0]
    return str(row[0]), int(row[1])


def live(client: Client, study: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for instance in study["instances"]:
        found += client.items("/api/annotations", target_id=instance)
    return found


def comparable(annotation: dict[str, Any]) -> tuple[Any, ...]:
    return (annotation["label"], annotation["target_id"], annotation["coordinates"])


def test_export_store_delete_and_import_recreates_the_annotations(
        atrium: AtriumUnderTest) -> None:
    org = unique("Radiology SR ")
    study = upload_into(atrium, org, StudySpec(patient_id=unique("SR-"), series=1,
                                               instances_per_series=2))
    clinician = Client(atrium, "clinician", org)
    made = []
    for n, (label, shape) in enumerate(SHAPES):
        answer = annotate(clinician, "instance", study["instances"][n % 2], label=label,
                          coordinates=shape)
        assert answer.status_code == 201, answer.text
        made.append(answer.json())
    note = annotate(clinician, "study", study["study"], label="whole study", coordinates=None,
                    annotation_type="general")
    assert note.status_code == 201

    path = f"/api/studies/{study['study']}/annotations/sr"
    exported = clinician.get(path)
    assert exported.status_code == 200, exported.text
    assert exported.headers["Content-Type"].startswith("application/dicom")
    assert exported.headers["Atrium-Annotations"] == "5"
    assert exported.headers["Atrium-Annotations-Skipped"] == "1"  # the study-level note
    document = pydicom.dcmread(io.BytesIO(exported.content))
    assert document.Modality == "SR"
    report = read_measurement_report(document)
    assert report is not None
    assert [m.annotation_id for m in report.measurements] == [
        uuid.UUID(a["id"]) for a in made]
    assert [m.label for m in report.measurements] == [label for label, _ in SHAPES]

    # Stored in Orthanc: mirrored in the study, imported without duplicating anything.
    stored = clinician.post(path)
    assert stored.status_code == 201, stored.text
    sr_uid = stored.json()["sop_instance_uid"]
    atrium.wait_mirrored([sr_uid])
    assert str(atrium.scalar(
        "SELECT se.study_id FROM instances i JOIN series se ON se.id = i.series_id "
        "WHERE i.sop_instance_uid = %s", (sr_uid,))) == study["study"]
    assert sr_import(atrium, sr_uid) == ("imported", 0)
    assert sorted(map(comparable, live(clinician, study))) == sorted(map(comparable, made))

    for annotation in made:
        assert clinician.delete(f"/api/annotations/{annotation['id']}").status_code == 204
    assert live(clinician, study) == []

    # The SR arrives as OHIF sends it: the annotations come back, equivalent.
    stow(atrium, org, exported.content)
    assert sr_import(atrium, str(document.SOPInstanceUID)) == ("imported", 5)
    recreated = live(clinician, study)
    assert sorted(map(comparable, recreated)) == sorted(map(comparable, made))
    assert all(a["properties"]["sr_sop_instance_uid"] == document.SOPInstanceUID
               and a["properties"]["source"] == "dicom-sr" for a in recreated)
    assert {a["id"] for a in recreated}.isdisjoint({a["id"] for a in made})

    # The same SR again (deleted from Orthanc, then re-sent): nothing duplicated. A
    # later SR being looked at proves the importer has passed this one.
    orthanc_id = atrium.scalar("SELECT orthanc_id FROM instances WHERE sop_instance_uid = %s",
                               (str(document.SOPInstanceUID),))
    admin = atrium.auth("admin", org)
    assert requests.delete(f"{atrium.url}/instances/{orthanc_id}", headers=admin,
                           timeout=30).status_code == 200
    wait_until(lambda: atrium.scalar(
        "SELECT deleted_at IS NOT NULL FROM instances WHERE sop_instance_uid = %s",
        (str(document.SOPInstanceUID),)), 30, what="the SR deletion mirrored")
    stow(atrium, org, exported.content)
    atrium.wait_mirrored([str(document.SOPInstanceUID)])
    later = clinician.get(path)
    stow(atrium, org, later.content)
    assert sr_import(atrium, str(pydicom.dcmread(io.BytesIO(later.content)).SOPInstanceUID)
                     ) == ("imported", 0)
    assert len(live(clinician, study)) == 5


def test_an_sr_of_another_template_is_left_alone(atrium: AtriumUnderTest) -> None:
    org = unique("Reports ")
    document = pydicom.dcmread(Path(get_testdata_file("test-SR.dcm")))
    # A fresh identity for this run, so that the study is this organization's.
    document.StudyInstanceUID = pydicom.uid.generate_uid()
    document.SeriesInstanceUID = pydicom.uid.generate_uid()
    document.SOPInstanceUID = pydicom.uid.generate_uid()
    buffer = io.BytesIO()
    document.save_as(buffer)
    before = atrium.scalar("SELECT count(*) FROM annotations")
    stow(atrium, org, buffer.getvalue())
    assert sr_import(atrium, str(document.SOPInstanceUID)) == ("ignored", 0)
    assert atrium.scalar("SELECT count(*) FROM annotations") == before


def test_export_follows_scope_and_refuses_what_it_cannot_see(atrium: AtriumUnderTest) -> None:
    org = unique("Scope SR ")
    study = upload_into(atrium, org, StudySpec(patient_id=unique("SRS-"), series=1,
                                               instances_per_series=1))
    path = f"/api/studies/{study['study']}/annotations/sr"
    empty = Client(atrium, "clinician", org).get(path)
    assert empty.status_code == 200 and empty.headers["Atrium-Annotations"] == "0"
    assert read_measurement_report(pydicom.dcmread(io.BytesIO(empty.content))).measurements \
        == []
    stranger = Client(atrium, "admin", unique("Outside "))
    assert is_problem(stranger.get(path), 404)
    assert is_problem(stranger.post(path), 404)
    # A researcher does not see an identified patient's study, nor its SR.
    assert is_problem(Client(atrium, "researcher", org).get(path), 404)
    # Storing is annotating: an ml-engineer may not.
    assert Client(atrium, "ml-engineer", org).post(path).status_code == 403


def _new_tracking_uids(dataset: pydicom.Dataset) -> None:
    """What OHIF's "save as SR" does to measurements it already has: new tracking
    UIDs (DCM 112040), a new SOP Instance UID."""
    for item in dataset.get("ContentSequence", []):
        names = item.get("ConceptNameCodeSequence", [])
        if names and names[0].CodeValue == "112040":
            item.UID = pydicom.uid.generate_uid()
        _new_tracking_uids(item)


def test_a_viewers_measurements_saved_as_sr_too_are_not_duplicated(
        atrium: AtriumUnderTest) -> None:
    org = unique("Viewer SR ")
    study = upload_into(atrium, org, StudySpec(patient_id=unique("VSR-"), series=1,
                                               instances_per_series=2))
    clinician = Client(atrium, "clinician", org)
    (label, line), (other_label, other) = SHAPES[0], SHAPES[1]
    kept = annotate(clinician, "instance", study["instances"][0], label=label,
                    coordinates=line, properties={"source": "ohif", "ohif_tool": "Length"})
    assert kept.status_code == 201, kept.text
    not_the_viewers = annotate(clinician, "instance", study["instances"][1], label=other_label,
                               coordinates=other)
    assert not_the_viewers.status_code == 201, not_the_viewers.text
    exported = clinician.get(f"/api/studies/{study['study']}/annotations/sr")
    assert exported.headers["Atrium-Annotations"] == "2"
    document = pydicom.dcmread(io.BytesIO(exported.content))
    _new_tracking_uids(document)
    document.SOPInstanceUID = pydicom.uid.generate_uid()
    document.file_meta.MediaStorageSOPInstanceUID = document.SOPInstanceUID
    buffer = io.BytesIO()
    document.save_as(buffer)
    stow(atrium, org, buffer.getvalue())

    # The viewer's measurement is recognised by its image, frame and points; the
    # other one, whose tracking UID no longer names it, is imported as a new one.
    assert sr_import(atrium, str(document.SOPInstanceUID)) == ("imported", 1)
    imported = [a for a in live(clinician, study) if a["properties"].get("source") == "dicom-sr"]
    assert [a["target_id"] for a in imported] == [study["instances"][1]]
