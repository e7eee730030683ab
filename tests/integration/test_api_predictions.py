"""``/api/predictions``: written by ml-engineers and admins for an active model about
a target of their organization, queried by model, target, type, confidence and time,
segmentation files stored and served back through the guard — scoped like every
other read (SPEC §6, §7) and audited.

Each test works in organizations of its own (studies arrive through
``POST /api/instances``, which files them in the uploader's organization).
"""

from __future__ import annotations

import gzip
import io
import os
import uuid
from typing import Any

import pydicom
import pytest
import requests

from tests.integration.conftest import AtriumUnderTest
from tests.integration.test_api_resources import Client, ids, is_problem, unique
from tests.support.dicomgen import StudySpec, make_study

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(4000)


# ------------------------------------------------------------------- helpers

def study_in(atrium: AtriumUnderTest, org: str, deidentified: bool) -> dict[str, str]:
    """A study uploaded into ``org``: its id, its first series' and instance's ids."""
    spec = StudySpec(patient_id=unique("PR-"), deidentified=deidentified, series=1,
                     instances_per_series=1)
    blobs = make_study(spec)
    for blob in blobs:
        stored = requests.post(f"{atrium.url}/api/instances", data=blob, timeout=30,
                               headers={**atrium.auth("admin", org),
                                        "Content-Type": "application/dicom"})
        assert stored.status_code == 201, stored.text
    atrium.wait_mirrored([str(pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID) for b in blobs])
    return dict(atrium.sql(
        "SELECT 'study', s.id::text FROM studies s WHERE s.study_instance_uid = %(uid)s "
        "UNION ALL SELECT 'series', se.id::text FROM series se JOIN studies s "
        "ON s.id = se.study_id WHERE s.study_instance_uid = %(uid)s "
        "UNION ALL SELECT 'instance', i.id::text FROM instances i JOIN series se "
        "ON se.id = i.series_id JOIN studies s ON s.id = se.study_id "
        "WHERE s.study_instance_uid = %(uid)s", {"uid": spec.study_uid}))


def model(client: Client, status: str = "active") -> str:
    created = client.post("/api/models", {"model_name": unique("nodule-"),
                                          "model_version": "1", "model_type": "segmentation"})
    assert created.status_code == 201, created.text
    model_id = created.json()["id"]
    for step in {"active": [], "deprecated": ["deprecated"],
                 "archived": ["deprecated", "archived"]}[status]:
        assert client.put(f"/api/models/{model_id}", {"status": step}).status_code == 200
    return str(model_id)


def predict(client: Client, model_id: str, target_id: str, target_type: str = "study",
            **fields: Any) -> requests.Response:
    return client.post("/api/predictions", {
        "model_id": model_id, "target_type": target_type, "target_id": target_id,
        "results": {"class": "nodule"}, **fields})


def written(client: Client, model_id: str, target_id: str, target_type: str = "study",
            **fields: Any) -> dict[str, Any]:
    answer = predict(client, model_id, target_id, target_type, **fields)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def upload(client: Client, prediction_id: str, kind: str, data: bytes,
           media_type: str) -> requests.Response:
    return requests.put(f"{client.url}/api/predictions/{prediction_id}/segmentation/{kind}",
                        data=data, timeout=60,
                        headers={**client.headers, "Content-Type": media_type})


def problem_detail(response: requests.Response, status: int) -> str:
    assert is_problem(response, status), (response.status_code, response.text[:300])
    return str(response.json()["detail"])


# --------------------------------------------------------------------- tests

def test_a_prediction_is_written_read_and_found_by_each_filter(
        atrium: AtriumUnderTest) -> None:
    org = unique("Predict ")
    engineer = Client(atrium, "ml-engineer", org)
    target = study_in(atrium, org, deidentified=True)
    first_model, second_model = model(engineer), model(engineer)

    created = predict(engineer, first_model, target["study"], prediction_type="detection",
                      confidence=0.91, inference_time_ms=120,
                      results={"class": "nodule", "probability": 0.91,
                               "scores": {"nodule": 0.91, "normal": 0.09},
                               "extra": {"boxes": [[1, 2, 3, 4]]}})
    assert created.status_code == 201, created.text
    first = created.json()
    assert created.headers["Location"] == f"/api/predictions/{first['id']}"
    assert first["results"]["scores"] == {"nodule": 0.91, "normal": 0.09}
    assert first["results"]["extra"] == {"boxes": [[1, 2, 3, 4]]}
    assert (first["confidence"], first["inference_time_ms"]) == (0.91, 120)
    assert first["user_id"] == engineer.get("/api/me").json()["id"]
    assert engineer.get(f"/api/predictions/{first['id']}").json() == first
    # The row carries its target's organization and patient (what scopes it).
    assert atrium.sql("SELECT pr.organization_id = s.organization_id, "
                      "pr.patient_id = s.patient_id FROM predictions pr JOIN studies s "
                      "ON s.id = pr.target_id WHERE pr.id = %s", (first["id"],)) == [(True, True)]

    series = written(engineer, first_model, target["series"], "series", confidence=0.4,
                     prediction_type="classification")
    instance = written(engineer, second_model, target["instance"], "instance",
                       confidence=0.7)
    unscored = written(engineer, second_model, target["study"])
    everything = [first, series, instance, unscored]

    def found(**params: Any) -> list[str]:
        return [p["id"] for p in engineer.items("/api/predictions", **params)]

    assert found(model_id=first_model) == [series["id"], first["id"]]  # newest first
    assert found(model_id=second_model) == [unscored["id"], instance["id"]]
    assert found(target_type="series", target_id=target["series"]) == [series["id"]]
    assert found(target_id=target["study"]) == [unscored["id"], first["id"]]
    assert found(target_type="instance", model_id=second_model) == [instance["id"]]
    assert found(prediction_type="detection") == [first["id"]]
    assert found(min_confidence=0.5) == [instance["id"], first["id"]]
    assert found(max_confidence=0.5) == [series["id"]]
    assert found(min_confidence=0.7, max_confidence=0.7) == [instance["id"]]
    assert found(created_after=series["created_at"]) == [
        unscored["id"], instance["id"], series["id"]]
    assert found(created_before=series["created_at"]) == [first["id"]]
    assert found(created_after=series["created_at"],
                 created_before=unscored["created_at"]) == [instance["id"], series["id"]]

    pages, cursor = [], None
    while True:
        page = engineer.get("/api/predictions", limit=1,
                            **({"cursor": cursor} if cursor else {})).json()
        pages.append([p["id"] for p in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(pages) == 4 and all(len(p) == 1 for p in pages)
    assert [p[0] for p in pages] == [p["id"] for p in reversed(everything)]


def test_a_mask_and_an_overlay_are_stored_and_served_back_byte_for_byte(
        atrium: AtriumUnderTest) -> None:
    org = unique("Predict ")
    engineer = Client(atrium, "ml-engineer", org)
    target = study_in(atrium, org, deidentified=True)
    prediction = written(engineer, model(engineer), target["study"])
    path = f"/api/predictions/{prediction['id']}/segmentation"
    assert "has no mask" in problem_detail(engineer.get(f"{path}/mask"), 404)

    stored = upload(engineer, prediction["id"], "mask", PNG, "image/png")
    assert stored.status_code == 200, stored.text
    segmentation = stored.json()["results"]["segmentation"]
    assert segmentation == {"mask_url": f"{path}/mask", "mask_media_type": "image/png",
                            "mask_bytes": len(PNG)}
    nifti = gzip.compress(os.urandom(10_000))
    assert upload(engineer, prediction["id"], "overlay", nifti,
                  "application/gzip").status_code == 200

    mask = engineer.get(f"{path}/mask")
    assert mask.status_code == 200 and mask.content == PNG
    assert mask.headers["Content-Type"] == "image/png"
    overlay = engineer.get(segmentation["mask_url"].replace("mask", "overlay"))
    assert overlay.content == nifti and overlay.headers["Content-Type"] == "application/gzip"
    read = engineer.get(f"/api/predictions/{prediction['id']}").json()["results"]
    assert read["class"] == "nodule"  # the rest of the results is kept
    assert set(read["segmentation"]) == {"mask_url", "mask_media_type", "mask_bytes",
                                         "overlay_url", "overlay_media_type", "overlay_bytes"}

    replaced = os.urandom(3000)
    assert upload(engineer, prediction["id"], "mask", replaced,
                  "application/octet-stream").status_code == 200
    again = engineer.get(f"{path}/mask")
    assert again.content == replaced
    assert again.headers["Content-Type"] == "application/octet-stream"

    # Refused: a file that is not what its type says, no file, another type, a reader.
    assert "PNG" in problem_detail(upload(engineer, prediction["id"], "mask", b"GIF89a....",
                                          "image/png"), 400)
    assert problem_detail(upload(engineer, prediction["id"], "mask", b"", "image/png"), 400)
    assert is_problem(upload(engineer, prediction["id"], "mask", PNG, "text/plain"), 415)
    researcher = Client(atrium, "researcher", org)
    assert is_problem(upload(researcher, prediction["id"], "mask", PNG, "image/png"), 403)
    assert researcher.get(f"{path}/mask").content == replaced  # readers may read it
    assert engineer.get(f"{path}/mask").content == replaced  # nothing refused changed it


def test_segmentation_urls_are_atriums_to_set_not_the_clients(atrium: AtriumUnderTest) -> None:
    org = unique("Predict ")
    engineer = Client(atrium, "ml-engineer", org)
    target = study_in(atrium, org, deidentified=True)
    refused = predict(engineer, model(engineer), target["study"],
                      results={"segmentation": {"mask_url": "s3://elsewhere/mask.png"}})
    detail = problem_detail(refused, 400)
    assert "results.segmentation" in detail and "PUT /api/predictions/" in detail
    assert refused.json()["errors"][0]["field"] == "results.segmentation"


def test_callers_without_phi_access_see_predictions_on_de_identified_targets_only(
        atrium: AtriumUnderTest) -> None:
    org = unique("Predict ")
    admin, engineer = Client(atrium, "admin", org), Client(atrium, "ml-engineer", org)
    identified = study_in(atrium, org, deidentified=False)
    pseudonymous = study_in(atrium, org, deidentified=True)
    model_id = model(engineer)
    # An ml-engineer reads de-identified data only: an identified target is not there.
    assert is_problem(predict(engineer, model_id, identified["study"]), 404)
    on_identified = written(admin, model_id, identified["study"])
    assert upload(admin, on_identified["id"], "mask", PNG, "image/png").status_code == 200
    on_pseudonymous = written(engineer, model_id, pseudonymous["study"])

    for role in ("researcher", "ml-engineer"):
        reader = Client(atrium, role, org)
        assert ids(reader.items("/api/predictions", model_id=model_id)) == {on_pseudonymous["id"]}
        assert is_problem(reader.get(f"/api/predictions/{on_identified['id']}"), 404)
        assert is_problem(reader.get(
            f"/api/predictions/{on_identified['id']}/segmentation/mask"), 404)
        assert reader.get(f"/api/predictions/{on_pseudonymous['id']}").status_code == 200
    assert is_problem(upload(engineer, on_identified["id"], "mask", PNG, "image/png"), 404)
    clinician = Client(atrium, "clinician", org)
    assert ids(clinician.items("/api/predictions", model_id=model_id)) == {
        on_identified["id"], on_pseudonymous["id"]}
    assert clinician.get(f"/api/predictions/{on_identified['id']}/segmentation/mask"
                         ).content == PNG
    assert is_problem(Client(atrium, "auditor", org).get("/api/predictions"), 403)


def test_another_organizations_predictions_are_never_found_nor_changed(
        atrium: AtriumUnderTest) -> None:
    ours, theirs = unique("Predict "), unique("Predict ")
    their_admin = Client(atrium, "admin", theirs)
    their_study = study_in(atrium, theirs, deidentified=False)
    model_id = model(their_admin)  # the registry is shared: the same model serves both
    their_prediction = written(their_admin, model_id, their_study["study"])
    assert upload(their_admin, their_prediction["id"], "mask", PNG,
                  "image/png").status_code == 200
    our_admin = Client(atrium, "admin", ours)
    our_study = study_in(atrium, ours, deidentified=False)
    our_prediction = written(our_admin, model_id, our_study["study"])

    path = f"/api/predictions/{their_prediction['id']}"
    nobodys = str(uuid.uuid4())
    for suffix in ("", "/segmentation/mask", "/segmentation/overlay"):
        # Exactly the answer of an id that does not exist: nothing tells them apart.
        answers = [problem_detail(our_admin.get(f"/api/predictions/{pid}{suffix}"), 404)
                   .replace(pid, "ID") for pid in (their_prediction["id"], nobodys)]
        assert answers[0] == answers[1]
    assert is_problem(upload(our_admin, their_prediction["id"], "mask", b"\x00" * 10,
                             "application/octet-stream"), 404)
    assert is_problem(predict(our_admin, model_id, their_study["study"]), 404)
    assert ids(our_admin.items("/api/predictions", model_id=model_id)) == {our_prediction["id"]}
    assert ids(our_admin.items("/api/predictions", target_id=their_study["study"])) == set()
    # Theirs is as it was.
    assert their_admin.get(f"{path}/segmentation/mask").content == PNG
    assert atrium.scalar("SELECT count(*) FROM predictions WHERE target_id = %s",
                         (their_study["study"],)) == 1


def test_bad_input_is_a_4xx_problem_that_says_what_to_fix(atrium: AtriumUnderTest) -> None:
    org = unique("Predict ")
    engineer = Client(atrium, "ml-engineer", org)
    target = study_in(atrium, org, deidentified=True)
    model_id = model(engineer)
    valid = {"model_id": model_id, "target_type": "study", "target_id": target["study"],
             "results": {"class": "nodule"}}
    bad_bodies: list[dict[str, Any]] = [
        {**valid, "unknown": 1},
        {**valid, "results": {"class": "x", "heatmap": [1, 2]}},
        {**valid, "confidence": 1.5},
        {**valid, "confidence": -0.1},
        {**valid, "confidence": "high"},
        {**valid, "inference_time_ms": -1},
        {**valid, "inference_time_ms": 1.5},
        {**valid, "model_id": "not-a-uuid"},
        {**valid, "target_id": "1; DROP TABLE predictions"},
        {**valid, "target_type": "patient"},
        {**valid, "prediction_type": "x" * 51},
        {**valid, "results": {"probability": 2}},
        {**valid, "results": {"scores": {"a": 1.1}}},
        {**valid, "results": {"class": ""}},
        {**valid, "results": "nodule"},
        {**valid, "results": {"extra": {"blob": "x" * 70_000}}},
        {key: value for key, value in valid.items() if key != "results"},
    ]
    for body in bad_bodies:
        answer = engineer.post("/api/predictions", body)
        assert problem_detail(answer, 400), body
    for raw in (b'{"model_id": NaN}', b'{"confidence": Infinity}', b"{not json"):
        answer = requests.post(f"{atrium.url}/api/predictions", data=raw, timeout=30,
                               headers={**engineer.headers, "Content-Type": "application/json"})
        assert problem_detail(answer, 400)

    for status in ("deprecated", "archived"):
        refused = predict(engineer, model(engineer, status), target["study"])
        assert status in problem_detail(refused, 409)
    assert "model" in problem_detail(predict(engineer, str(uuid.uuid4()), target["study"]), 404)
    assert problem_detail(predict(engineer, model_id, str(uuid.uuid4())), 404)
    assert problem_detail(predict(engineer, model_id, target["study"], "slide"), 404)

    for params in ({"min_confidence": 1.5}, {"max_confidence": "high"},
                   {"min_confidence": 0.8, "max_confidence": 0.2},
                   {"created_after": "2024-02-01T00:00:00Z",
                    "created_before": "2024-01-01T00:00:00Z"},
                   {"created_after": "yesterday"}, {"model_id": "x"},
                   {"target_type": "patient"}, {"cursor": "bogus"}, {"sort": "id"}):
        assert problem_detail(engineer.get("/api/predictions", **params), 400), params
    assert problem_detail(engineer.get("/api/predictions/not-a-uuid"), 400)
    assert problem_detail(engineer.get("/api/predictions/not-a-uuid/segmentation/mask"), 400)
    assert is_problem(Client(atrium, "researcher", org).post("/api/predictions", valid), 403)
    assert is_problem(requests.get(f"{atrium.url}/api/predictions", timeout=30), 401)
    assert atrium.scalar("SELECT count(*) FROM predictions WHERE model_id = %s",
                         (model_id,)) == 0


def test_reads_and_writes_are_audited_with_phi_for_identified_targets(
        atrium: AtriumUnderTest) -> None:
    org = unique("Predict ")
    admin = Client(atrium, "admin", org)
    identified = study_in(atrium, org, deidentified=False)
    pseudonymous = study_in(atrium, org, deidentified=True)
    model_id = model(admin)
    phi = written(admin, model_id, identified["study"])
    plain = written(admin, model_id, pseudonymous["study"])
    for prediction in (phi, plain):
        assert admin.get(f"/api/predictions/{prediction['id']}").status_code == 200
        assert upload(admin, prediction["id"], "mask", PNG, "image/png").status_code == 200
        assert admin.get(f"/api/predictions/{prediction['id']}/segmentation/mask"
                         ).status_code == 200

    def audited(prediction_id: str) -> dict[str, bool]:
        return {action: flag for action, flag in atrium.sql(
            "SELECT action, phi_accessed FROM audit_log WHERE resource_type = 'prediction' "
            "AND resource_id = %s", (prediction_id,))}

    actions = {"POST /api/predictions", "GET /api/predictions/{id}",
               "PUT /api/predictions/{id}/segmentation/mask",
               "GET /api/predictions/{id}/segmentation/mask"}
    assert audited(phi["id"]) == dict.fromkeys(actions, True)
    assert audited(plain["id"]) == dict.fromkeys(actions, False)

    user_id = admin.get("/api/me").json()["id"]
    assert admin.get("/api/predictions", model_id=model_id).status_code == 200
    assert admin.get("/api/predictions", model_id=model_id,
                     target_id=pseudonymous["study"]).status_code == 200
    lists = atrium.sql("SELECT phi_accessed FROM audit_log WHERE user_id = %s AND "
                       "action = 'GET /api/predictions' ORDER BY event_time", (user_id,))
    assert lists == [(True,), (False,)]
