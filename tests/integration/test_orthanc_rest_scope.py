"""Orthanc's own REST API: administrators only, and confined to their organization
like every other route — a resource of another organization is refused, and what
spans every organization (lists, searches, uploads, tools) is left to the
administrators of the default organization, who operate Orthanc as a whole."""

from __future__ import annotations

import io

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from tests.integration.conftest import AtriumUnderTest
from tests.support.dicomgen import StudySpec, make_study

ORG_A, ORG_B = "Rest Scope A", "Rest Scope B"


def stored_study(atrium: AtriumUnderTest, org: str, patient: str) -> str:
    """A study stored by STOW-RS into ``org``; its Orthanc id."""
    spec = StudySpec(patient_id=patient, series=1, instances_per_series=1)
    blobs = make_study(spec)
    DICOMwebClient(url=f"{atrium.url}/dicom-web", headers=atrium.auth("clinician", org)
                   ).store_instances([pydicom.dcmread(io.BytesIO(b)) for b in blobs])
    atrium.wait_mirrored([pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for b in blobs])
    return str(atrium.scalar("SELECT orthanc_id FROM studies WHERE study_instance_uid = %s",
                             (spec.study_uid,)))


def status(atrium: AtriumUnderTest, path: str, role: str, org: str) -> int:
    return requests.get(f"{atrium.url}{path}", headers=atrium.auth(role, org),
                        timeout=30).status_code


def test_administrators_reach_their_own_resources_only(atrium: AtriumUnderTest) -> None:
    mine = stored_study(atrium, ORG_A, "REST-A")
    theirs = stored_study(atrium, ORG_B, "REST-B")
    series = atrium.api.get_json(f"/studies/{mine}")["Series"][0]
    instance = atrium.api.get_json(f"/series/{series}")["Instances"][0]
    for path in (f"/studies/{mine}", f"/studies/{mine}/instances", f"/series/{series}",
                 f"/instances/{instance}/tags?simplify", "/system", "/statistics"):
        assert status(atrium, path, "admin", ORG_A) == 200, path
    for path in (f"/studies/{theirs}", f"/studies/{theirs}/archive", "/studies", "/patients",
                 "/changes", "/jobs", "/tools/find"):
        assert status(atrium, path, "admin", ORG_A) == 403, path
    assert status(atrium, f"/studies/{mine}", "clinician", ORG_A) == 403
    refused = atrium.scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'GET orthanc' "
        "AND details->>'uri' = %s AND (details->>'status')::int = 404",
        (f"/studies/{theirs}",))
    assert refused >= 1  # a cross-organization attempt is on record as such


def test_the_default_organizations_administrators_operate_orthanc(
        atrium: AtriumUnderTest) -> None:
    theirs = stored_study(atrium, ORG_B, "REST-B2")
    for path in ("/studies", "/changes?limit=1", f"/studies/{theirs}"):
        assert status(atrium, path, "admin", "Default") == 200, path
    blob = make_study(StudySpec(patient_id="REST-UPLOAD", series=1, instances_per_series=1))[0]
    assert requests.post(f"{atrium.url}/instances", data=blob, timeout=30,
                         headers=atrium.auth("admin", ORG_A)).status_code == 403
    # Orthanc's own upload parses before anything can scan: closed to every token.
    assert requests.post(f"{atrium.url}/instances", data=blob, timeout=30,
                         headers=atrium.auth("admin", "Default")).status_code == 403
    assert requests.post(f"{atrium.url}/api/instances", data=blob, timeout=30,
                         headers={**atrium.auth("admin", "Default"),
                                  "Content-Type": "application/dicom"}).status_code == 201
