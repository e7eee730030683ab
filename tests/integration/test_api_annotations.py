"""``/api/annotations``: versioned annotations on every kind of target — shapes and
their server-computed bounding boxes, optimistic updates (If-Match, 409, 428), a
linear history under concurrent editors, soft deletion, every query filter
including the viewport, organization and PHI scope, audit, and bad input.

Each test uploads its own study into an organization of its own, so tests share
one Orthanc+Atrium without seeing each other's rows.
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from typing import Any

import pydicom
import pytest
import requests

from atrium.devenv import wait_until
from tests.integration.conftest import AtriumUnderTest
from tests.integration.test_api_resources import Client, is_problem, unique
from tests.support.dicomgen import StudySpec, make_study

pytestmark = pytest.mark.integration


def upload_into(atrium: AtriumUnderTest, org: str, spec: StudySpec) -> dict[str, Any]:
    """Upload a study through ``POST /api/instances`` as a clinician of ``org`` (so it
    lands there); its ids: study, series and instances."""
    blobs = make_study(spec)
    headers = {**atrium.auth("clinician", org), "Content-Type": "application/dicom"}
    for blob in blobs:
        answer = requests.post(f"{atrium.url}/api/instances", data=blob, headers=headers,
                               timeout=30)
        assert answer.status_code in (200, 201), answer.text
    uids = [str(pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID) for b in blobs]
    atrium.wait_mirrored(uids)
    rows = atrium.sql(
        "SELECT s.id, se.id, i.id FROM instances i JOIN series se ON se.id = i.series_id "
        "JOIN studies s ON s.id = se.study_id WHERE s.study_instance_uid = %s "
        "ORDER BY se.series_number, i.instance_number", (spec.study_uid,))
    return {"study": str(rows[0][0]), "series": str(rows[0][1]),
            "instances": [str(r[2]) for r in rows]}


def organization_id(atrium: AtriumUnderTest, org: str) -> str:
    Client(atrium, "admin", org).get("/api/me")  # the token's organization exists from now
    return str(atrium.scalar("SELECT id FROM organizations WHERE name = %s", (org,)))


def polygon(*points: tuple[float, float]) -> dict[str, Any]:
    return {"type": "polygon", "points": [{"x": x, "y": y} for x, y in points]}


TRIANGLE = polygon((10, 20), (50, 20), (30, 60))


def annotate(client: Client, target_type: str, target_id: str, label: str = "lesion",
             coordinates: dict[str, Any] | None = TRIANGLE, annotation_type: str = "dicom",
             **extra: Any) -> requests.Response:
    body: dict[str, Any] = {"annotation_type": annotation_type, "target_type": target_type,
                            "target_id": target_id, "label": label, **extra}
    if coordinates is not None:
        body["coordinates"] = coordinates
    return client.post("/api/annotations", body)


def put(client: Client, annotation_id: str, body: Any, version: Any = None) -> requests.Response:
    headers = dict(client.headers)
    if version is not None:
        headers["If-Match"] = str(version)
    return requests.put(f"{client.url}/api/annotations/{annotation_id}", json=body,
                        headers=headers, timeout=30)


# ----------------------------------------------------------------- lifecycle

def test_an_annotation_is_created_versioned_and_soft_deleted(atrium: AtriumUnderTest) -> None:
    org = unique("Reading Room ")
    ids = upload_into(atrium, org, StudySpec(patient_id=unique("ANN-"), series=1,
                                             instances_per_series=2))
    alice = Client(atrium, "clinician", org, user=unique("alice-"))
    bob = Client(atrium, "clinician", org, user=unique("bob-"))
    instance = ids["instances"][0]

    sent = {**TRIANGLE, "bounding_box": {"x": 0, "y": 0, "width": 1, "height": 1}}
    created = annotate(alice, "instance", instance, coordinates=sent,
                       properties={"finding": "nodule"})
    assert created.status_code == 201, created.text
    first = created.json()
    annotation_id = first["id"]
    assert created.headers["Location"] == f"/api/annotations/{annotation_id}"
    assert created.headers["ETag"] == '"1"'
    assert first["version"] == 1 and first["parent_id"] is None
    assert first["version_id"] == annotation_id
    assert first["user_id"] == alice.get("/api/me").json()["id"]
    # The client's bounding box never wins.
    assert first["coordinates"]["bounding_box"] == {"x": 10, "y": 20, "width": 40, "height": 40}

    path = f"/api/annotations/{annotation_id}"
    read = alice.get(path)
    assert read.status_code == 200 and read.headers["ETag"] == '"1"'
    assert read.json() == first

    # RFC 6585's 428, sent as a 400 naming it: Orthanc 1.10 cannot send a 428.
    missing = put(bob, annotation_id, {"label": "mass"})
    assert is_problem(missing, 400)
    assert missing.json()["type"].endswith("/precondition-required")
    assert is_problem(put(bob, annotation_id, {"label": "mass"}, version="abc"), 400)
    assert is_problem(put(bob, annotation_id, {"label": "mass"}, version=7), 409)
    changed = put(bob, annotation_id, {"label": "mass",
                                       "coordinates": polygon((0, 0), (8, 0), (8, 4), (0, 0))},
                  version='"1"')
    assert changed.status_code == 200, changed.text
    second = changed.json()
    assert second["id"] == annotation_id and second["version"] == 2
    assert second["parent_id"] == first["version_id"] != second["version_id"]
    assert second["label"] == "mass" and second["properties"] == {"finding": "nodule"}
    # The repeated closing corner is dropped; the box follows the new shape.
    assert second["coordinates"]["points"] == [{"x": 0, "y": 0}, {"x": 8, "y": 0},
                                               {"x": 8, "y": 4}]
    assert second["coordinates"]["bounding_box"] == {"x": 0, "y": 0, "width": 8, "height": 4}
    assert second["user_id"] == bob.get("/api/me").json()["id"]
    assert second["created_at"] == first["created_at"]
    assert alice.get(path).json() == second
    conflict = put(alice, annotation_id, {"label": "stale"}, version=1)
    assert is_problem(conflict, 409) and conflict.json()["current_version"] == 2

    history = alice.get(path + "/history").json()["items"]
    assert [(v["version"], v["label"]) for v in history] == [(1, "lesion"), (2, "mass")]
    assert history[1]["parent_id"] == history[0]["version_id"]

    assert is_problem(requests.delete(alice.url + path, headers={**alice.headers, "If-Match": "1"},
                                      timeout=30), 409)
    assert alice.delete(path).status_code == 204
    assert is_problem(alice.get(path), 404)
    assert is_problem(put(alice, annotation_id, {"label": "x"}, version=2), 404)
    assert is_problem(alice.delete(path), 404)
    assert annotation_id not in {a["id"] for a in alice.items("/api/annotations")}
    # Soft: the rows stay, and the history still tells who did what.
    assert atrium.scalar("SELECT count(*) FROM annotations WHERE root_id = %s AND "
                         "deleted_at IS NOT NULL", (annotation_id,)) == 2
    assert len(alice.get(path + "/history").json()["items"]) == 2


def test_twenty_concurrent_editors_leave_a_linear_history(atrium: AtriumUnderTest) -> None:
    org = unique("Tumor Board ")
    ids = upload_into(atrium, org, StudySpec(patient_id=unique("CON-"), series=1,
                                             instances_per_series=1))
    editors = [Client(atrium, "clinician", org, user=f"editor-{n}") for n in range(20)]
    annotation_id = annotate(editors[0], "study", ids["study"], label="start").json()["id"]
    path = f"/api/annotations/{annotation_id}"

    # All twenty write against version 1 at once: exactly one wins.
    barrier = threading.Barrier(20)
    statuses: list[int] = []

    def blind(editor: Client, n: int) -> None:
        barrier.wait()
        statuses.append(put(editor, annotation_id, {"label": f"blind-{n}"}, version=1)
                        .status_code)

    threads = [threading.Thread(target=blind, args=(e, n)) for n, e in enumerate(editors)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [409] * 19

    # Then each retries on 409 until its change lands: none is lost.
    def persistent(editor: Client, n: int) -> None:
        barrier.wait()
        while True:
            current = editor.get(path)
            answer = put(editor, annotation_id, {"label": f"edit-{n}"},
                         version=current.headers["ETag"])
            if answer.status_code == 200:
                return
            assert answer.status_code == 409, answer.text

    threads = [threading.Thread(target=persistent, args=(e, n)) for n, e in enumerate(editors)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    history = editors[0].get(path + "/history", limit=100).json()["items"]
    assert [v["version"] for v in history] == list(range(1, 23))
    assert all(v["parent_id"] == prev["version_id"] for prev, v in zip(history, history[1:],
                                                                        strict=False))
    assert sorted(v["label"] for v in history[2:]) == sorted(f"edit-{n}" for n in range(20))
    assert atrium.scalar("SELECT count(*) FROM annotations WHERE root_id = %s AND is_latest",
                         (annotation_id,)) == 1
    assert editors[0].get(path).json()["version"] == 22


# ------------------------------------------------------------ shapes and types

def test_every_shape_gets_its_bounding_box_and_suits_its_target(atrium: AtriumUnderTest) -> None:
    org = unique("Pathology ")
    org_id = organization_id(atrium, org)
    ids = upload_into(atrium, org, StudySpec(patient_id=unique("SHP-"), series=1,
                                             instances_per_series=1))
    slide = str(atrium.scalar("INSERT INTO slides (slide_id, organization_id, width_pixels, "
                              "height_pixels) VALUES (%s, %s, 90000, 60000) RETURNING id",
                              (unique("S-"), org_id)))
    recording = str(atrium.scalar(
        "INSERT INTO recordings (recording_type, organization_id, recording_date, "
        "number_of_channels) VALUES ('ECG', %s, now(), 12) RETURNING id", (org_id,)))
    user = Client(atrium, "clinician", org)
    instance = ids["instances"][0]

    def box(target_type: str, target_id: str, coordinates: dict[str, Any],
            annotation_type: str = "dicom") -> dict[str, float]:
        answer = annotate(user, target_type, target_id, coordinates=coordinates,
                          annotation_type=annotation_type)
        assert answer.status_code == 201, answer.text
        return answer.json()["coordinates"]["bounding_box"]

    assert box("instance", instance, {"type": "point", "points": [{"x": 3.5, "y": 4}],
                                      "frame": 1}) == {"x": 3.5, "y": 4, "width": 0,
                                                       "height": 0}
    assert box("series", ids["series"], {"type": "polyline", "points": [
        {"x": 5, "y": 9}, {"x": -1, "y": 2}]}) == {"x": -1, "y": 2, "width": 6, "height": 7}
    assert box("instance", instance, {"type": "rectangle", "x": 1, "y": 2, "width": 3,
                                      "height": 4}) == {"x": 1, "y": 2, "width": 3, "height": 4}
    assert box("instance", instance, {"type": "ellipse", "center": {"x": 10, "y": 10},
                                      "radius_x": 4, "radius_y": 2}) == {
        "x": 6, "y": 8, "width": 8, "height": 4}
    rotated = box("instance", instance, {"type": "ellipse", "center": {"x": 10, "y": 10},
                                         "radius_x": 4, "radius_y": 2, "rotation": 90})
    assert rotated == pytest.approx({"x": 8, "y": 6, "width": 4, "height": 8})
    assert box("slide", slide, {**polygon((100, 200), (150, 250), (120, 300)),
                                "units": "micrometer"}, "wsi") == {
        "x": 100, "y": 200, "width": 50, "height": 100}
    assert box("recording", recording, {"type": "time_range", "start": 1.5, "end": 4,
                                        "channels": [2, 0, 5]}, "signal") == {
        "x": 1.5, "y": 0, "width": 2.5, "height": 5}

    # A note without coordinates is a general annotation.
    note = annotate(user, "study", ids["study"], coordinates=None, annotation_type="general")
    assert note.status_code == 201 and note.json()["coordinates"] is None

    wrong = [
        annotate(user, "slide", slide),  # dicom annotation on a slide
        annotate(user, "instance", instance, annotation_type="wsi"),
        annotate(user, "recording", recording, annotation_type="signal"),  # polygon on a signal
        annotate(user, "instance", instance, coordinates={
            "type": "time_range", "start": 0, "end": 1}),
        annotate(user, "instance", instance, coordinates={**TRIANGLE, "units": "micrometer"}),
        annotate(user, "instance", instance, coordinates=None),
        annotate(user, "recording", recording, annotation_type="signal", coordinates={
            "type": "time_range", "start": 3, "end": 3}),
        annotate(user, "recording", recording, annotation_type="signal", coordinates={
            "type": "time_range", "start": 0, "end": 3, "channels": [1, 1]}),
        annotate(user, "instance", instance, coordinates=polygon((0, 0), (1, 1), (0, 0),
                                                                 (0, 0))),
    ]
    for answer in wrong:
        assert is_problem(answer, 400), answer.text
        assert answer.json()["errors"][0]["in"] == "body"


# ------------------------------------------------------------------- queries

def test_annotations_are_found_by_every_filter_and_paged(atrium: AtriumUnderTest) -> None:
    org = unique("Lab ")
    ids = upload_into(atrium, org, StudySpec(patient_id=unique("QRY-"), series=1,
                                             instances_per_series=2))
    first, second = ids["instances"]
    alice = Client(atrium, "clinician", org, user=unique("alice-"))
    bob = Client(atrium, "clinician", org, user=unique("bob-"))
    made: dict[str, str] = {}
    for n in range(6):
        x = n * 100
        made[f"a{n}"] = annotate(alice if n % 2 else bob, "instance", first if n < 4 else second,
                                 label="tumor" if n < 3 else "vessel",
                                 coordinates=polygon((x, 0), (x + 50, 0), (x, 50))).json()["id"]
    general = annotate(alice, "study", ids["study"], label="tumor", coordinates=None,
                       annotation_type="general").json()["id"]

    def found(**params: Any) -> set[str]:
        return {a["id"] for a in alice.items("/api/annotations", **params)}

    everything = set(made.values()) | {general}
    assert found() == everything
    assert found(target_type="instance", target_id=first) == {made[f"a{n}"] for n in range(4)}
    assert found(target_id=second) == {made["a4"], made["a5"]}
    assert found(label="tumor") == {made["a0"], made["a1"], made["a2"], general}
    assert found(annotation_type="general") == {general}
    alice_id = alice.get("/api/me").json()["id"]
    assert found(user_id=alice_id) == {made["a1"], made["a3"], made["a5"], general}
    # Viewport: boxes [0,50], [100,150], ... intersect x in [120, 260] → a1, a2.
    assert found(target_id=first, bbox="120,10,140,5") == {made["a1"], made["a2"]}
    assert found(bbox="150,50,0,0") == {made["a1"]}  # touching corners intersect
    assert found(bbox="1000,1000,10,10") == set()

    newest = alice.get("/api/annotations", limit=3).json()
    assert [a["id"] for a in newest["items"]] == [general, made["a5"], made["a4"]]
    timestamps = [a["created_at"] for a in alice.items("/api/annotations")]
    assert found(created_after=timestamps[2]) == {general, made["a5"], made["a4"]}
    assert found(created_before=timestamps[2]) == everything - {general, made["a5"],
                                                                made["a4"]}
    assert len(alice.items("/api/annotations")) == 7  # cursors walk every page

    for bad in ({"bbox": "1,2,3"}, {"bbox": "1,2,-3,4"}, {"bbox": "a,b,c,d"},
                {"target_id": "not-a-uuid"}, {"label": ""}, {"annotation_type": "x"},
                {"created_after": "yesterday"}, {"colour": "red"}):
        assert is_problem(alice.get("/api/annotations", **bad), 400), bad


def test_a_study_filter_finds_the_study_its_series_and_instances_annotations_paged(
        atrium: AtriumUnderTest) -> None:
    """``study_id``: what a viewer opening a study asks once, instead of once per image."""
    org = unique("Viewer Room ")
    ids = upload_into(atrium, org, StudySpec(patient_id=unique("STU-"), series=2,
                                             instances_per_series=2))
    other = upload_into(atrium, org, StudySpec(patient_id=unique("OTH-"), series=1,
                                               instances_per_series=1))
    series = [str(s) for (s,) in atrium.sql(
        "SELECT id FROM series WHERE study_id = %s ORDER BY series_number", (ids["study"],))]
    user = Client(atrium, "clinician", org)
    on_instances = [annotate(user, "instance", instance, label=f"i{n}").json()
                    for n, instance in enumerate(ids["instances"])]
    on_series = annotate(user, "series", series[1], coordinates=None,
                         annotation_type="general").json()
    on_study = annotate(user, "study", ids["study"], coordinates=None,
                        annotation_type="general").json()
    elsewhere = annotate(user, "instance", other["instances"][0]).json()
    gone = annotate(user, "instance", ids["instances"][3]).json()
    assert user.delete(f"/api/annotations/{gone['id']}").status_code == 204
    edited = put(user, on_instances[0]["id"], {"label": "edited"}, version=1)
    assert edited.status_code == 200, edited.text

    wanted = {a["id"] for a in (*on_instances, on_series, on_study)}
    found = user.items("/api/annotations", study_id=ids["study"])
    assert {a["id"] for a in found} == wanted and len(found) == len(wanted)
    assert {a["version"] for a in found if a["id"] == on_instances[0]["id"]} == {2}
    assert elsewhere["id"] not in {a["id"] for a in found}
    # Paged like every list: two at a time, newest first, each once.
    pages, cursor = [], None
    while True:
        answer = user.get("/api/annotations", study_id=ids["study"], limit=2,
                          **({"cursor": cursor} if cursor else {}))
        assert answer.status_code == 200, answer.text
        pages.append([a["id"] for a in answer.json()["items"]])
        cursor = answer.json()["next_cursor"]
        if cursor is None:
            break
    assert len(pages) == 3 and all(len(page) == 2 for page in pages)
    assert [i for page in pages for i in page] == [a["id"] for a in found]
    # Other filters narrow it as usual.
    assert [a["id"] for a in user.items("/api/annotations", study_id=ids["study"],
                                        target_type="series")] == [on_series["id"]]
    assert {a["id"] for a in user.items("/api/annotations", study_id=ids["study"],
                                        annotation_type="dicom")} == {
        a["id"] for a in on_instances}

    # Another organization's study, or none: the same 404 as a named target.
    stranger = Client(atrium, "clinician", unique("Elsewhere "))
    for study in (ids["study"], str(uuid.uuid4())):
        refused = stranger.get("/api/annotations", study_id=study)
        assert is_problem(refused, 404) and refused.json()["detail"] == f"No study {study}"
    assert is_problem(user.get("/api/annotations", study_id="not-a-uuid"), 400)

    # A researcher: a de-identified study's annotations; an identified study is a 404.
    anonymous = upload_into(atrium, org, StudySpec(patient_id=unique("ANS-"), series=1,
                                                   instances_per_series=1, deidentified=True))
    on_anon = annotate(user, "instance", anonymous["instances"][0]).json()
    researcher = Client(atrium, "researcher", org)
    assert [a["id"] for a in researcher.items("/api/annotations",
                                              study_id=anonymous["study"])] == [on_anon["id"]]
    assert is_problem(researcher.get("/api/annotations", study_id=ids["study"]), 404)


# --------------------------------------------------------- scope, PHI, audit

def test_other_organizations_and_researchers_see_nothing_they_should_not(
        atrium: AtriumUnderTest) -> None:
    org = unique("Hospital ")
    identified = upload_into(atrium, org, StudySpec(patient_id=unique("PHI-"), series=1,
                                                    instances_per_series=1))
    anonymous = upload_into(atrium, org, StudySpec(patient_id=unique("ANON-"), series=1,
                                                   instances_per_series=1, deidentified=True))
    clinician = Client(atrium, "clinician", org)
    researcher = Client(atrium, "researcher", org)
    on_phi = annotate(clinician, "study", identified["study"]).json()
    on_anon = annotate(clinician, "study", anonymous["study"]).json()

    # Researchers: only de-identified targets, in lists and by id, and to annotate.
    assert {a["id"] for a in researcher.items("/api/annotations")} == {on_anon["id"]}
    assert researcher.get(f"/api/annotations/{on_anon['id']}").status_code == 200
    assert is_problem(researcher.get(f"/api/annotations/{on_phi['id']}"), 404)
    assert is_problem(annotate(researcher, "study", identified["study"]), 404)
    assert annotate(researcher, "study", anonymous["study"]).status_code == 201
    assert is_problem(researcher.get("/api/annotations", target_type="study",
                                     target_id=identified["study"]), 404)

    # Another organization: the same 404 as for nothing at all, on every route.
    stranger = Client(atrium, "admin", unique("Elsewhere "))
    missing = str(uuid.uuid4())
    for annotation_id in (on_phi["id"], missing):
        path = f"/api/annotations/{annotation_id}"
        answers = [stranger.get(path), stranger.get(path + "/history"),
                   put(stranger, annotation_id, {"label": "x"}, version=1),
                   stranger.delete(path)]
        assert all(is_problem(a, 404) for a in answers), [a.text for a in answers]
        details = [a.json()["detail"] for a in answers[:1]]
        assert details == [f"No annotation {annotation_id}"]
    assert stranger.items("/api/annotations") == []
    assert stranger.items("/api/annotations", target_id=identified["study"]) == []
    assert is_problem(annotate(stranger, "study", identified["study"]), 404)
    assert is_problem(annotate(stranger, "instance", identified["instances"][0]), 404)
    assert is_problem(annotate(clinician, "study", missing), 404)

    # Every access is on record, PHI flagged by the target's patient.
    phi_rows = atrium.scalar("SELECT count(*) FROM audit_log WHERE resource_type = "
                             "'annotation' AND resource_id = %s AND phi_accessed",
                             (on_phi["id"],))
    assert phi_rows >= 1  # its creation, at least
    anon_rows = atrium.sql("SELECT phi_accessed FROM audit_log WHERE resource_type = "
                           "'annotation' AND resource_id = %s", (on_anon["id"],))
    assert anon_rows and not any(phi for (phi,) in anon_rows)


# ----------------------------------------------------------------- bad input

def test_bad_annotations_are_clear_problems_and_nothing_is_written(
        atrium: AtriumUnderTest) -> None:
    org = unique("Clinic ")
    ids = upload_into(atrium, org, StudySpec(patient_id=unique("BAD-"), series=1,
                                             instances_per_series=1))
    user = Client(atrium, "clinician", org)
    study = ids["study"]
    base = {"annotation_type": "dicom", "target_type": "study", "target_id": study,
            "label": "x", "coordinates": TRIANGLE}

    # The NaN and Infinity cases below replace this literal in the JSON text.
    assert '"x": 10' in json.dumps(base)

    def post_raw(text: str) -> requests.Response:
        return requests.post(f"{user.url}/api/annotations", data=text.encode(), timeout=30,
                             headers={**user.headers, "Content-Type": "application/json"})

    cases: list[tuple[requests.Response, int]] = [
        (user.post("/api/annotations", {**base, "colour": "red"}), 400),
        (user.post("/api/annotations", {**base, "label": 5}), 400),
        (user.post("/api/annotations", {**base, "target_id": "12345"}), 400),
        (user.post("/api/annotations", {**base, "target_type": "patient"}), 400),
        (user.post("/api/annotations", {**base, "coordinates": polygon((0, 0), (1, 1))}), 400),
        (user.post("/api/annotations", {**base, "coordinates": {"type": "hexagon"}}), 400),
        (user.post("/api/annotations", {**base, "coordinates": {
            "type": "rectangle", "x": 0, "y": 0, "width": 0, "height": 1}}), 400),
        (user.post("/api/annotations", {**base, "coordinates": {
            **TRIANGLE, "points": [{"x": 1, "y": 1}] * 10_001}}), 400),
        (user.post("/api/annotations", {**base, "coordinates": polygon(
            (0, 0), (1e12, 0), (0, 1))}), 400),
        (post_raw(json.dumps(base).replace('"x": 10', '"x": NaN')), 400),
        (post_raw(json.dumps(base).replace('"x": 10', '"x": Infinity')), 400),
        (post_raw("{not json"), 400),
        (user.post("/api/annotations", {**base, "label": "L" * 256}), 400),
        (user.post("/api/annotations", {**base, "label": "L" * 10_000_000}), 413),
        (user.post("/api/annotations", {**base, "properties": {"blob": "p" * 70_000}}), 413),
        (user.post("/api/annotations", {**base, "target_id": str(uuid.uuid4())}), 404),
        (user.get("/api/annotations/not-a-uuid"), 400),
    ]
    for answer, status in cases:
        assert is_problem(answer, status), (status, answer.status_code, answer.text[:300])
        assert answer.json()["detail"]
    assert atrium.scalar("SELECT count(*) FROM annotations WHERE target_id = %s",
                         (study,)) == 0

    created = user.post("/api/annotations", base).json()
    for body in ({}, {"annotation_type": "wsi"}, {"coordinates": polygon((0, 0), (1, 1))},
                 {"label": None, "extra": 1}):
        assert is_problem(put(user, created["id"], body, version=1), 400), body
    assert user.get(f"/api/annotations/{created['id']}").json()["version"] == 1


def test_annotations_of_a_deleted_study_disappear_with_it(atrium: AtriumUnderTest) -> None:
    org = unique("Archive ")
    ids = upload_into(atrium, org, StudySpec(patient_id=unique("DEL-"), series=1,
                                             instances_per_series=1))
    user = Client(atrium, "clinician", org)
    on_instance = annotate(user, "instance", ids["instances"][0]).json()["id"]
    on_study = annotate(user, "study", ids["study"], coordinates=None,
                        annotation_type="general").json()["id"]
    assert {a["id"] for a in user.items("/api/annotations")} == {on_instance, on_study}

    orthanc_id = atrium.scalar("SELECT orthanc_id FROM studies WHERE id = %s", (ids["study"],))
    deleted = requests.delete(f"{atrium.url}/studies/{orthanc_id}",
                              headers=atrium.auth("admin", org), timeout=30)
    assert deleted.status_code == 200, deleted.text
    wait_until(lambda: atrium.scalar("SELECT deleted_at IS NOT NULL FROM studies WHERE id = %s",
                                     (ids["study"],)), 30, what="the deletion mirrored")

    assert user.items("/api/annotations") == []
    for annotation_id in (on_instance, on_study):
        assert is_problem(user.get(f"/api/annotations/{annotation_id}"), 404)
        assert is_problem(user.get(f"/api/annotations/{annotation_id}/history"), 404)
    assert is_problem(annotate(user, "study", ids["study"], coordinates=None,
                               annotation_type="general"), 404)
    # Kept in the database, not deleted: the target could come back.
    assert atrium.scalar("SELECT count(*) FROM annotations WHERE root_id IN (%s, %s) "
                         "AND deleted_at IS NULL", (on_instance, on_study)) == 2
