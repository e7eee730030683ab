"""DICOMweb through Atrium's gateway, as OHIF and PACS use it: each caller sees,
retrieves and stores only within their organization, and roles without PHI access
see de-identified studies only."""

from __future__ import annotations

import io
import json
import uuid

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from tests.integration.conftest import AtriumUnderTest
from tests.support.dicomgen import StudySpec, make_study

ORG_A, ORG_B = "Gateway Hospital A", "Gateway Hospital B"


def client(atrium: AtriumUnderTest, role: str, org: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{atrium.url}/dicom-web", headers=atrium.auth(role, org))


def stow(atrium: AtriumUnderTest, org: str, spec: StudySpec) -> list[bytes]:
    blobs = make_study(spec)
    client(atrium, "clinician", org).store_instances(
        [pydicom.dcmread(io.BytesIO(b)) for b in blobs])
    atrium.wait_mirrored([pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for b in blobs])
    return blobs


@pytest.fixture(scope="module")
def studies(atrium: AtriumUnderTest) -> dict[str, StudySpec]:
    tag = uuid.uuid4().hex[:6]
    specs = {
        "a_identified": StudySpec(patient_id=f"GW-A-{tag}", patient_name="Identified^Alice",
                                  birth_date="19511111", series=2, instances_per_series=2),
        "a_deidentified": StudySpec(patient_id=f"GW-AD-{tag}", patient_name="Anon^A",
                                    deidentified=True, series=1, instances_per_series=2),
        "b_identified": StudySpec(patient_id=f"GW-B-{tag}", patient_name="Secret^Bob",
                                  series=1, instances_per_series=2),
    }
    for name, spec in specs.items():
        stow(atrium, ORG_B if name.startswith("b_") else ORG_A, spec)
    return specs


def study_uids(answer: list[dict]) -> set[str]:
    return {item["0020000D"]["Value"][0] for item in answer}


def test_stow_files_studies_under_the_uploaders_organization(
        atrium: AtriumUnderTest, studies: dict[str, StudySpec]) -> None:
    owners = dict(atrium.sql(
        "SELECT s.study_instance_uid, o.name FROM studies s JOIN organizations o "
        "ON o.id = s.organization_id WHERE s.study_instance_uid = ANY(%s)",
        ([s.study_uid for s in studies.values()],)))
    assert owners == {spec.study_uid: ORG_B if name.startswith("b_") else ORG_A
                      for name, spec in studies.items()}


def test_qido_lists_only_the_callers_studies(atrium: AtriumUnderTest,
                                             studies: dict[str, StudySpec]) -> None:
    seen_by_a = study_uids(client(atrium, "clinician", ORG_A).search_for_studies())
    assert {studies["a_identified"].study_uid, studies["a_deidentified"].study_uid} <= seen_by_a
    assert studies["b_identified"].study_uid not in seen_by_a
    seen_by_b = study_uids(client(atrium, "clinician", ORG_B).search_for_studies())
    assert studies["b_identified"].study_uid in seen_by_b
    assert not seen_by_b & {studies["a_identified"].study_uid,
                            studies["a_deidentified"].study_uid}
    # Matching keys still work inside the scope.
    only = client(atrium, "clinician", ORG_A).search_for_studies(
        search_filters={"PatientID": studies["a_identified"].patient_id})
    assert study_uids(only) == {studies["a_identified"].study_uid}
    by_name = client(atrium, "clinician", ORG_A).search_for_studies(
        search_filters={"PatientName": "Identified^Al*"})  # sent as Identified%5EAl*
    assert study_uids(by_name) == {studies["a_identified"].study_uid}
    across = client(atrium, "clinician", ORG_A).search_for_series(
        search_filters={"PatientID": studies["b_identified"].patient_id})
    assert across == []


def uids_of(answer: list[dict], tag: str) -> list[str]:
    return [item[tag]["Value"][0] for item in answer]


def mirrored_uids(atrium: AtriumUnderTest, specs: list[StudySpec]) -> tuple[set[str], set[str]]:
    """The series and the instance UIDs the mirror holds for these studies."""
    rows = atrium.sql(
        "SELECT se.series_instance_uid, i.sop_instance_uid FROM instances i "
        "JOIN series se ON se.id = i.series_id JOIN studies s ON s.id = se.study_id "
        "WHERE s.study_instance_uid = ANY(%s)", ([spec.study_uid for spec in specs],))
    return {series for series, _ in rows}, {sop for _, sop in rows}


def test_series_and_instance_searches_find_exactly_the_callers_items(
        atrium: AtriumUnderTest, studies: dict[str, StudySpec]) -> None:
    """Answered from the mirror's page of the caller's items, never from a search of
    all of Orthanc: complete, in scope, paged with the standard's Warning."""
    mine_series, mine_instances = mirrored_uids(
        atrium, [studies["a_identified"], studies["a_deidentified"]])
    theirs_series, theirs_instances = mirrored_uids(atrium, [studies["b_identified"]])
    assert (len(mine_series), len(mine_instances)) == (3, 6)
    a = client(atrium, "clinician", ORG_A)
    assert sorted(uids_of(a.search_for_series(), "0020000E")) == sorted(mine_series)
    assert sorted(uids_of(a.search_for_instances(), "00080018")) == sorted(mine_instances)
    b = client(atrium, "clinician", ORG_B)
    assert set(uids_of(b.search_for_series(), "0020000E")) == theirs_series
    # Matching keys at the series and instance levels, inside the scope only.
    one = sorted(mine_series)[0]
    assert uids_of(a.search_for_series(search_filters={"SeriesInstanceUID": one}),
                   "0020000E") == [one]
    assert a.search_for_series(
        search_filters={"SeriesInstanceUID": next(iter(theirs_series))}) == []
    assert a.search_for_instances(
        search_filters={"SOPInstanceUID": ",".join(theirs_instances)}) == []
    assert a.search_for_series(search_filters={"Modality": "MR"}) == []
    assert len(a.search_for_series(search_filters={"Modality": "C?"})) == 3
    in_study = a.search_for_instances(
        search_filters={"StudyInstanceUID": studies["a_deidentified"].study_uid})
    assert len(in_study) == 2
    numbered = a.search_for_instances(search_filters={"InstanceNumber": "1"})
    assert len(numbered) == 3 and all(item["00200013"]["Value"] == [1] for item in numbered)
    # Pages: complete and without repeats; a full page says more can be asked for.
    url, headers = f"{atrium.url}/dicom-web/instances", atrium.auth("clinician", ORG_A)
    pages, warnings = [], []
    for offset in (0, 4):
        reply = requests.get(url, params={"limit": "4", "offset": str(offset)},
                             headers=headers, timeout=30)
        assert reply.status_code == 200, reply.text
        pages.append(uids_of(reply.json(), "00080018"))
        warnings.append(reply.headers.get("Warning", ""))
    assert [len(page) for page in pages] == [4, 2]
    assert sorted(pages[0] + pages[1]) == sorted(mine_instances)
    assert "additional results" in warnings[0] and warnings[1] == ""
    # A researcher's series are those of de-identified patients only.
    researcher = client(atrium, "researcher", ORG_A)
    deidentified_series, _ = mirrored_uids(atrium, [studies["a_deidentified"]])
    assert set(uids_of(researcher.search_for_series(), "0020000E")) == deidentified_series
    refused = requests.get(f"{atrium.url}/dicom-web/series", params={"SeriesNumber": "x"},
                           headers=headers, timeout=30)
    assert refused.status_code == 400 and "SeriesNumber" in refused.text


def test_ohifs_calls_open_exactly_the_callers_studies(atrium: AtriumUnderTest,
                                                      studies: dict[str, StudySpec]) -> None:
    """QIDO studies and series, WADO-RS series metadata, then frames: what OHIF
    asks for to open a study."""
    viewer = client(atrium, "clinician", ORG_A)
    study = studies["a_identified"].study_uid
    listed = viewer.search_for_studies(search_filters={"StudyInstanceUID": study},
                                       fields=["StudyDescription"], limit=101, offset=0)
    assert study_uids(listed) == {study}
    series = viewer.search_for_series(study_instance_uid=study)
    assert len(series) == 2
    series_uid = series[0]["0020000E"]["Value"][0]
    metadata = viewer.retrieve_series_metadata(study, series_uid)
    assert len(metadata) == 2
    assert "/atrium-dicomweb-plugin/" not in json.dumps(metadata)
    sop = metadata[0]["00080018"]["Value"][0]
    frames = viewer.retrieve_instance_frames(  # what OHIF asks for
        study, series_uid, sop, frame_numbers=[1],
        media_types=(("application/octet-stream", "*"),))
    assert len(frames) == 1 and len(frames[0]) == 16 * 16 * 2

    other = studies["b_identified"].study_uid
    headers = atrium.auth("clinician", ORG_A)
    for path in (f"/studies/{other}/series", f"/studies/{other}/metadata",
                 f"/studies/{other}"):
        response = requests.get(f"{atrium.url}/dicom-web{path}", headers=headers, timeout=30)
        assert response.status_code == 404, (path, response.status_code)


def test_researchers_see_no_identified_patient_in_any_dicomweb_answer(
        atrium: AtriumUnderTest, studies: dict[str, StudySpec]) -> None:
    headers = atrium.auth("researcher", ORG_A)
    base = f"{atrium.url}/dicom-web"
    identified = studies["a_identified"]
    answers = [requests.get(f"{base}/studies", headers=headers, timeout=30),
               requests.get(f"{base}/series", headers=headers, timeout=30),
               requests.get(f"{base}/instances", headers=headers, timeout=30),
               requests.get(f"{base}/studies/{identified.study_uid}/metadata", headers=headers,
                            timeout=30)]
    assert answers[-1].status_code == 404
    text = " ".join(a.text for a in answers)
    for secret in ("Identified", identified.patient_id, identified.birth_date, "Secret^Bob"):
        assert secret not in text
    listed = study_uids(answers[0].json())
    assert studies["a_deidentified"].study_uid in listed
    assert identified.study_uid not in listed


def test_stow_into_another_organizations_study_is_refused_and_stores_nothing(
        atrium: AtriumUnderTest, studies: dict[str, StudySpec]) -> None:
    spec = studies["b_identified"]
    intruder = StudySpec(patient_id="INTRUDER", study_uid=spec.study_uid, series=1,
                         instances_per_series=1)
    dataset = pydicom.dcmread(io.BytesIO(make_study(intruder)[0]))
    with pytest.raises(requests.HTTPError) as refused:
        client(atrium, "clinician", ORG_A).store_instances([dataset])
    assert refused.value.response.status_code == 404
    stored = requests.post(f"{atrium.url}/tools/find", json={
        "Level": "Instance", "Query": {"SOPInstanceUID": dataset.SOPInstanceUID}},
        headers=atrium.internal_headers, timeout=30).json()
    assert stored == []


def test_roles_and_tokens_on_the_gateway(atrium: AtriumUnderTest,
                                         studies: dict[str, StudySpec]) -> None:
    base = f"{atrium.url}/dicom-web/studies"
    missing = requests.get(base, timeout=30)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(base, headers={"Authorization": "Bearer garbage"},
                        timeout=30).status_code == 401
    assert requests.get(base, headers=atrium.auth("auditor", ORG_A), timeout=30
                        ).status_code == 403
    dataset = pydicom.dcmread(io.BytesIO(make_study(StudySpec(series=1,
                                                              instances_per_series=1))[0]))
    with pytest.raises(requests.HTTPError) as refused:
        client(atrium, "researcher", ORG_A).store_instances([dataset])
    assert refused.value.response.status_code == 403
    # The plugin's own root is Atrium's alone, whatever the token.
    private = requests.get(f"{atrium.url}/atrium-dicomweb-plugin/studies",
                           headers=atrium.auth("admin", ORG_A), timeout=30)
    assert private.status_code == 403
