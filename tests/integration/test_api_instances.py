"""``POST /api/instances``: a DICOM file uploaded through Atrium's API lands in the
uploader's organization; nothing else gets in."""

from __future__ import annotations

import io
import types
import uuid

import psycopg
import pydicom
import pytest
import requests

from atrium.api import instances
from atrium.api.http import Request, problem_response
from atrium.dicom.scan import DEFAULT_LIMITS
from atrium.errors import ApiError, ServiceUnavailable
from atrium.orthanc_api import OrthancError
from tests.integration.conftest import AtriumUnderTest
from tests.support.dicomgen import StudySpec, make_study

DICOM = {"Content-Type": "application/dicom"}


def post(atrium: AtriumUnderTest, blob: bytes, role: str, org: str,
         content_type: str = "application/dicom") -> requests.Response:
    return requests.post(f"{atrium.url}/api/instances", data=blob, timeout=30,
                         headers={**atrium.auth(role, org), "Content-Type": content_type})


def owner(atrium: AtriumUnderTest, study_uid: str) -> str | None:
    return atrium.scalar("SELECT o.name FROM studies s JOIN organizations o ON "
                         "o.id = s.organization_id WHERE s.study_instance_uid = %s",
                         (study_uid,))


def test_an_upload_lands_in_the_uploaders_organization(atrium: AtriumUnderTest) -> None:
    spec = StudySpec(patient_id="UPLOAD-1", series=1, instances_per_series=2)
    blobs = make_study(spec)
    first = post(atrium, blobs[0], "clinician", "Upload Clinic")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["study_instance_uid"] == spec.study_uid and body["status"] == "Success"
    assert post(atrium, blobs[0], "clinician", "Upload Clinic").status_code == 200  # again
    assert post(atrium, blobs[1], "admin", "Upload Clinic").status_code == 201
    atrium.wait_mirrored([pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for b in blobs])
    assert owner(atrium, spec.study_uid) == "Upload Clinic"


def test_an_upload_into_another_organizations_study_is_refused(
        atrium: AtriumUnderTest) -> None:
    spec = StudySpec(patient_id="UPLOAD-2", series=1, instances_per_series=2)
    blobs = make_study(spec)
    assert post(atrium, blobs[0], "clinician", "Upload Clinic A").status_code == 201
    atrium.wait_mirrored([pydicom.dcmread(io.BytesIO(blobs[0])).SOPInstanceUID])
    refused = post(atrium, blobs[1], "clinician", "Upload Clinic B")
    assert refused.status_code == 404
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    sop = pydicom.dcmread(io.BytesIO(blobs[1])).SOPInstanceUID
    found = requests.post(f"{atrium.url}/tools/find", json={
        "Level": "Instance", "Query": {"SOPInstanceUID": sop}},
        headers=atrium.internal_headers, timeout=30).json()
    assert found == []
    assert owner(atrium, spec.study_uid) == "Upload Clinic A"


def test_bad_uploads_are_clear_4xx_problems(atrium: AtriumUnderTest) -> None:
    blob = make_study(StudySpec(series=1, instances_per_series=1))[0]
    assert post(atrium, b"garbage" * 100, "clinician", "Upload Clinic").status_code == 400
    assert post(atrium, blob[: len(blob) // 3], "clinician", "Upload Clinic"
                ).status_code == 400
    assert post(atrium, blob, "clinician", "Upload Clinic",
                content_type="application/json").status_code == 415
    assert post(atrium, blob, "researcher", "Upload Clinic").status_code == 403
    anonymous = requests.post(f"{atrium.url}/api/instances", data=blob, headers=DICOM,
                              timeout=30)
    assert anonymous.status_code == 401


def test_a_store_orthanc_could_not_do_now_is_a_503_to_retry(db_url: str) -> None:
    """With several nodes on one index, Orthanc answers 503 to a store that collided
    with another node's transaction: the uploader gets 503 and Retry-After (send it
    again), never a 500; other failures stay errors of the server."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        organization = conn.execute("INSERT INTO organizations (name) VALUES ('Busy') "
                                    "RETURNING id").fetchone()[0]

    class Orthanc:
        status = 503

        def post(self, path: str, body: bytes) -> bytes:
            raise OrthancError(path, self.status, "database busy")

    orthanc = Orthanc()
    app = types.SimpleNamespace(
        dicom_limits=DEFAULT_LIMITS, orthanc_http=orthanc,
        pool=types.SimpleNamespace(connection=lambda: psycopg.connect(db_url)))
    upload = instances.routes(app)[0].handler  # type: ignore[arg-type]
    blob = make_study(StudySpec(patient_id=f"BUSY-{uuid.uuid4().hex[:6]}", series=1,
                                instances_per_series=1))[0]
    request = Request("POST", "/api/instances", body=blob,
                      caller=types.SimpleNamespace(organization_id=organization))
    with pytest.raises(ServiceUnavailable) as busy:
        upload(request)
    answer = problem_response(busy.value)
    assert (answer.status, answer.headers.get("Retry-After")) == (503, "5")
    assert "send it again" in busy.value.detail

    orthanc.status = 500
    with pytest.raises(ApiError) as failed:
        upload(request)
    assert failed.value.status == 500
