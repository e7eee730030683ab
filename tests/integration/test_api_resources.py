"""The core resources of the API (SPEC §6) as served by Orthanc: organizations,
users, patients, the mirrored DICOM hierarchy, de-identification jobs — their
lifecycles, every search filter, pagination, bad input, and the PHI rules of §7.

Each test works in organizations and with identifiers of its own, so tests share
one Orthanc+Atrium without seeing each other's rows.
"""

from __future__ import annotations

import datetime as dt
import io
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from atrium.api.pagination import encode_cursor
from atrium.devenv import wait_until
from tests.integration.conftest import AtriumUnderTest
from tests.support.dicomgen import StudySpec, make_study, write_files

pytestmark = pytest.mark.integration

MAPPED_ORGANIZATION = "Radiology North"  # where storescu -aet MAPPED_AE lands (AET_MAP)


# ------------------------------------------------------------------- helpers

class Client:
    """Calls Atrium's API as one user of one organization."""

    def __init__(self, atrium: AtriumUnderTest, role: str, org: str,
                 user: str | None = None) -> None:
        self.url = atrium.url
        self.headers = atrium.auth(role, org, user)

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, headers=self.headers, timeout=30,
                                **kwargs)

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.call("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> requests.Response:
        return self.call("POST", path, json=body)

    def put(self, path: str, body: Any) -> requests.Response:
        return self.call("PUT", path, json=body)

    def delete(self, path: str) -> requests.Response:
        return self.call("DELETE", path)

    def items(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a list, following its cursors."""
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            answer = self.get(path, limit=1000, **params, **({"cursor": cursor} if cursor else {}))
            assert answer.status_code == 200, answer.text
            page = answer.json()
            found += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return found


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def sop_uids(blobs: list[bytes]) -> list[str]:
    return [str(pydicom.dcmread(io.BytesIO(blob)).SOPInstanceUID) for blob in blobs]


def upload_study(atrium: AtriumUnderTest, spec: StudySpec) -> str:
    """Store a study through Orthanc's REST API (organization "Default"); its id."""
    blobs = make_study(spec)
    for blob in blobs:
        assert atrium.upload(blob).status_code == 200
    atrium.wait_mirrored(sop_uids(blobs))
    return str(atrium.scalar("SELECT id FROM studies WHERE study_instance_uid = %s",
                             (spec.study_uid,)))


def send_study(atrium: AtriumUnderTest, spec: StudySpec, directory: Path,
               calling_aet: str = "MAPPED_AE") -> str:
    """Store a study by C-STORE from ``calling_aet`` (organization "Radiology North")."""
    blobs = make_study(spec)
    files = write_files(directory / spec.study_uid, blobs)
    subprocess.run(["storescu", "-aet", calling_aet, "-aec", "ATRIUM", "127.0.0.1",
                    str(atrium.dicom_port), *map(str, files)], check=True, timeout=120,
                   capture_output=True)
    atrium.wait_mirrored(sop_uids(blobs))
    return str(atrium.scalar("SELECT id FROM studies WHERE study_instance_uid = %s",
                             (spec.study_uid,)))


def ids(items: list[dict[str, Any]]) -> set[str]:
    return {item["id"] for item in items}


def is_problem(response: requests.Response, status: int) -> bool:
    return (response.status_code == status
            and response.headers["Content-Type"].startswith("application/problem+json")
            and response.json()["status"] == status)


# -------------------------------------------------------------- organizations

def test_an_organization_is_listed_created_read_changed_and_deleted(
        atrium: AtriumUnderTest) -> None:
    home = unique("Home ")
    admin = Client(atrium, "admin", home)
    listed = admin.items("/api/organizations")
    assert [o["name"] for o in listed] == [home]

    name = unique("Clinic ")
    created = admin.post("/api/organizations", {"name": name, "type": "clinic"})
    assert created.status_code == 201, created.text
    new = created.json()
    assert created.headers["Location"] == f"/api/organizations/{new['id']}"
    assert is_problem(admin.post("/api/organizations", {"name": name}), 409)
    # No super-admin: the creator is not a member of the new organization.
    assert is_problem(admin.get(f"/api/organizations/{new['id']}"), 404)
    assert new["id"] not in ids(admin.items("/api/organizations"))

    its_admin = Client(atrium, "admin", name)
    assert its_admin.get(f"/api/organizations/{new['id']}").json()["type"] == "clinic"
    changed = its_admin.put(f"/api/organizations/{new['id']}",
                            {"email": "desk@example.org", "address": {"city": "Lyon"}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["email"] == "desk@example.org"
    assert changed.json()["address"] == {"city": "Lyon"}
    assert is_problem(its_admin.put(f"/api/organizations/{new['id']}", {"name": name + "x"}),
                      409)
    assert Client(atrium, "clinician", name).delete(
        f"/api/organizations/{new['id']}").status_code == 403

    assert its_admin.delete(f"/api/organizations/{new['id']}").status_code == 204
    # Its users lose access at once, logins cached before the deletion included.
    after = its_admin.get(f"/api/organizations/{new['id']}")
    assert is_problem(after, 403)
    assert Client(atrium, "admin", name, user=unique("late-")).get(
        "/api/organizations").status_code == 403
    assert is_problem(admin.post("/api/organizations", {"name": name}), 409)


def test_the_default_organization_cannot_be_deleted(atrium: AtriumUnderTest) -> None:
    admin = Client(atrium, "admin", "Default")
    default = admin.items("/api/organizations")[0]
    assert is_problem(admin.delete(f"/api/organizations/{default['id']}"), 409)
    mapped = Client(atrium, "admin", MAPPED_ORGANIZATION)
    north = mapped.items("/api/organizations")[0]
    assert is_problem(mapped.delete(f"/api/organizations/{north['id']}"), 409)


# ---------------------------------------------------------------------- users

def test_users_of_the_organization_are_listed_and_only_oneself_changes_preferences(
        atrium: AtriumUnderTest) -> None:
    org = unique("Team ")
    alice = Client(atrium, "clinician", org, user=unique("alice-"))
    bob = Client(atrium, "researcher", org, user=unique("bob-"))
    me = alice.get("/api/me").json()
    bob_id = bob.get("/api/me").json()["id"]

    listed = alice.items("/api/users")
    assert ids(listed) == {me["id"], bob_id}
    assert [u["username"] for u in listed] == sorted(u["username"] for u in listed)
    assert ids(alice.items("/api/users", role="researcher")) == {bob_id}
    assert alice.get(f"/api/users/{bob_id}").json()["roles"] == ["researcher"]

    changed = alice.put(f"/api/users/{me['id']}", {"preferences": {"theme": "dark"}})
    assert changed.status_code == 200, changed.text
    assert alice.get(f"/api/users/{me['id']}").json()["preferences"] == {"theme": "dark"}
    assert is_problem(alice.put(f"/api/users/{bob_id}", {"preferences": {}}), 403)
    assert is_problem(alice.put(f"/api/users/{me['id']}", {"preferences": []}), 400)
    assert is_problem(alice.put(f"/api/users/{me['id']}",
                                {"preferences": {"x": "y" * 20_000}}), 413)
    assert is_problem(Client(atrium, "admin", unique("Other ")).get(f"/api/users/{bob_id}"),
                      404)


# ------------------------------------------------------------------- patients

def test_a_patient_is_created_read_changed_and_deleted(atrium: AtriumUnderTest) -> None:
    org = unique("Ward ")
    clinician, admin = Client(atrium, "clinician", org), Client(atrium, "admin", org)
    mrn = unique("MRN-")
    created = clinician.post("/api/patients", {
        "mrn": mrn, "first_name": "Ada", "last_name": "Lovelace", "sex": "F",
        "date_of_birth": "1815-12-10", "metadata": {"insurance": {"provider": "X"}}})
    assert created.status_code == 201, created.text
    patient = created.json()
    path = created.headers["Location"]
    assert path == f"/api/patients/{patient['id']}"
    assert clinician.get(path).json() == patient
    assert patient["is_deidentified"] is False and patient["number_of_studies"] == 0

    assert is_problem(clinician.post("/api/patients", {"mrn": mrn}), 409)
    other = clinician.post("/api/patients", {"mrn": unique("MRN-")}).json()
    assert is_problem(clinician.put(path, {"mrn": other["mrn"]}), 409)
    changed = clinician.put(path, {"first_name": "Augusta", "date_of_birth": None})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["first_name"], changed.json()["date_of_birth"]) == ("Augusta", None)
    assert changed.json()["last_name"] == "Lovelace"

    assert Client(atrium, "researcher", org).post("/api/patients",
                                                  {"mrn": "R1"}).status_code == 403
    assert is_problem(clinician.delete(path), 403)
    assert admin.delete(path).status_code == 204
    assert is_problem(clinician.get(path), 404)
    assert patient["id"] not in ids(clinician.items("/api/patients"))
    # The MRN stays taken by the deleted record (the database's uniqueness).
    assert is_problem(clinician.post("/api/patients", {"mrn": mrn}), 409)


def test_a_patient_with_studies_cannot_be_deleted(atrium: AtriumUnderTest) -> None:
    spec = StudySpec(patient_id=unique("DEL-"), series=1, instances_per_series=1)
    study_id = upload_study(atrium, spec)
    admin = Client(atrium, "admin", "Default")
    patient_id = admin.get(f"/api/studies/{study_id}").json()["patient_id"]
    assert is_problem(admin.delete(f"/api/patients/{patient_id}"), 409)
    assert is_problem(admin.put(f"/api/patients/{patient_id}", {"mrn": unique("NEW-")}), 409)


def test_patients_are_found_by_each_filter(atrium: AtriumUnderTest) -> None:
    clinician = Client(atrium, "clinician", unique("Search "))
    people = {
        "smith": {"first_name": "John", "last_name": "Smithson", "sex": "M",
                  "date_of_birth": "1950-03-04"},
        "smyth": {"first_name": "Joan", "last_name": "Smyth", "sex": "F",
                  "date_of_birth": "1980-07-08"},
        "anon": {"first_name": None, "last_name": "Pseudonym", "sex": "O",
                 "date_of_birth": "2001-01-01", "is_deidentified": True},
    }
    made = {}
    for key, fields in people.items():
        answer = clinician.post("/api/patients", {"mrn": unique(f"{key}-"), **fields})
        assert answer.status_code == 201, answer.text
        made[key] = answer.json()

    def found(**params: Any) -> set[str]:
        return {key for key, p in made.items()
                if p["id"] in ids(clinician.items("/api/patients", **params))}

    assert found() == {"smith", "smyth", "anon"}
    assert found(q="smi") == {"smith"}
    assert found(q="Jo Sm") == {"smith", "smyth"}
    assert found(q="joan smyth") == {"smyth"}
    assert found(q="pseudonym") == {"anon"}  # a last name alone
    assert found(mrn=made["smyth"]["mrn"]) == {"smyth"}
    assert found(sex="M") == {"smith"}
    assert found(birth_date_from="1980-07-08") == {"smyth", "anon"}
    assert found(birth_date_to="1980-07-08") == {"smith", "smyth"}
    assert found(birth_date_from="1960-01-01", birth_date_to="1990-01-01") == {"smyth"}
    assert found(is_deidentified="true") == {"anon"}
    assert found(q="'; DROP TABLE patients; --") == set()


def test_patient_pages_cover_every_patient_once(atrium: AtriumUnderTest) -> None:
    clinician = Client(atrium, "clinician", unique("Pages "))
    made = [clinician.post("/api/patients", {"mrn": f"P{n}"}).json()["id"] for n in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = clinician.get("/api/patients", limit=3,
                             **({"cursor": cursor} if cursor else {})).json()
        pages += 1
        assert len(page["items"]) <= 3
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(made))  # newest first, each once


# --------------------------------------------------------------- the hierarchy

def test_studies_are_found_by_each_filter_and_read_down_the_hierarchy(
        atrium: AtriumUnderTest) -> None:
    marker, other_marker = unique("mk"), unique("mk")
    wanted = StudySpec(patient_id=unique("ST-"), accession=unique("A"), modality="MR",
                       description=f"Thorax angiography {marker}", series=2,
                       instances_per_series=3)
    control = StudySpec(patient_id=unique("ST-"), accession=unique("A"), modality="CT",
                        description=f"Knee {other_marker}", series=1, instances_per_series=1)
    study_id, control_id = upload_study(atrium, wanted), upload_study(atrium, control)
    clinician = Client(atrium, "clinician", "Default")
    study = clinician.get(f"/api/studies/{study_id}").json()

    def found(**params: Any) -> set[str]:
        items = ids(clinician.items("/api/studies", **params))
        return {name for name, sid in (("wanted", study_id), ("control", control_id))
                if sid in items}

    assert found(q=marker) == {"wanted"}
    assert found(q=other_marker) == {"control"}
    assert found(q="angiography", accession_number=wanted.accession) == {"wanted"}
    assert found(q="knee", accession_number=wanted.accession) == set()
    assert found(patient_id=study["patient_id"]) == {"wanted"}
    assert found(modality="MR", patient_id=study["patient_id"]) == {"wanted"}
    assert found(modality="CT", patient_id=study["patient_id"]) == set()
    assert found(accession_number=wanted.accession) == {"wanted"}
    assert found(study_instance_uid=control.study_uid) == {"control"}
    assert found(date_from="2024-01-31", date_to="2024-01-31",
                 accession_number=wanted.accession) == {"wanted"}
    assert found(date_from="2024-02-01", accession_number=wanted.accession) == set()
    assert found(date_to="2024-01-30", accession_number=wanted.accession) == set()

    assert (study["number_of_series"], study["number_of_instances"]) == (2, 6)
    assert study["storage_size_bytes"] > 0 and study["study_date"] == "2024-01-31"
    assert [s["series_number"] for s in study["series"]] == [1, 2]
    series_id = study["series"][0]["id"]
    series = clinician.get(f"/api/series/{series_id}").json()
    assert (series["study_id"], series["number_of_instances"]) == (study_id, 3)

    first = clinician.get(f"/api/series/{series_id}/instances", limit=2).json()
    rest = clinician.get(f"/api/series/{series_id}/instances",
                         cursor=first["next_cursor"]).json()
    numbers = [i["instance_number"] for i in first["items"] + rest["items"]]
    assert numbers == [1, 2, 3] and rest["next_cursor"] is None

    instance = clinician.get(f"/api/instances/{first['items'][0]['id']}").json()
    assert instance["series_id"] == series_id and instance["study_id"] == study_id
    assert instance["metadata"]["tags"]["StudyDescription"] == wanted.description


def test_bad_input_is_a_400_problem_never_a_5xx(atrium: AtriumUnderTest) -> None:
    clinician = Client(atrium, "clinician", unique("Bad "))
    patients_cursor = encode_cursor([dt.datetime.now(dt.UTC), uuid.uuid4()], scope="patients")
    tampered = patients_cursor[:-3] + ("AAA" if not patients_cursor.endswith("AAA") else "BBB")
    cases = [
        ("/api/patients/not-a-uuid", {}),
        ("/api/studies/123e4567-e89b-12d3-a456-42661417400", {}),
        ("/api/patients", {"birth_date_from": "2024-13-01"}),
        ("/api/studies", {"date_to": "31/01/2024"}),
        ("/api/studies", {"patient_id": "1; DROP TABLE studies"}),
        ("/api/patients", {"colour": "red"}),
        ("/api/patients", {"limit": "0"}),
        ("/api/studies", {"limit": "1001"}),
        ("/api/patients", {"cursor": tampered}),
        ("/api/patients", {"cursor": "not a cursor"}),
        ("/api/studies", {"cursor": patients_cursor}),
        ("/api/patients", {"q": "_"}),
        ("/api/studies", {"q": "__"}),
        ("/api/patients", {"sex": "X"}),
    ]
    for path, params in cases:
        answer = clinician.get(path, **params)
        assert is_problem(answer, 400), (path, params, answer.status_code, answer.text)

    for q in ("'; DROP TABLE patients; --", "a%b_c\\d", "\"unclosed", "o'brien & | ! :*"):
        for path in ("/api/patients", "/api/studies"):
            answer = clinician.get(path, q=q)
            assert answer.status_code == 200, (path, q, answer.text)
    assert atrium.scalar("SELECT count(*) FROM patients") is not None

    bodies = [{"mrn": ""}, {"mrn": " padded "}, {"mrn": "M", "sex": "male"},
              {"mrn": "M", "date_of_birth": "1815-02-30"}, {"mrn": "M", "ssn": "1"}]
    for body in bodies:
        assert is_problem(clinician.post("/api/patients", body), 400), body


def test_query_values_arrive_url_decoded(atrium: AtriumUnderTest) -> None:
    clinician = Client(atrium, "clinician", unique("Decode "))
    mrn = unique("a b%c+")
    made = clinician.post("/api/patients", {"mrn": mrn, "last_name": "Smithson"}).json()
    assert [p["id"] for p in clinician.items("/api/patients", mrn=mrn)] == [made["id"]]
    assert [p["id"] for p in clinician.items("/api/patients", q="smith%")] == [made["id"]]
    assert is_problem(clinician.get("/api/patients", q="%"), 400)
    assert is_problem(clinician.get("/api/studies", q="\\"), 400)

    marker, other = unique("mk"), unique("mk")
    wanted = StudySpec(patient_id=unique("WS-"), accession=unique("A"),
                       description=f"Thorax angiography {marker}", series=1,
                       instances_per_series=1)
    control = StudySpec(patient_id=unique("WS-"), description=f"Knee {other}", series=1,
                        instances_per_series=1)
    study_id, control_id = upload_study(atrium, wanted), upload_study(atrium, control)
    reader = Client(atrium, "clinician", "Default")

    def found(**params: Any) -> set[str]:
        items = ids(reader.items("/api/studies", **params))
        return {name for name, sid in (("wanted", study_id), ("control", control_id))
                if sid in items}

    assert found(q=f"thorax {marker}") == {"wanted"}
    assert found(q=f"angiography -{marker}", accession_number=wanted.accession) == set()
    assert found(q=f"{marker} or {other}") == {"wanted", "control"}
    assert found(q=f'"angiography {marker}"') == {"wanted"}


# ----------------------------------------------------------------- PHI rules

def test_a_researcher_sees_de_identified_patients_only(atrium: AtriumUnderTest) -> None:
    surname, given, mrn = unique("Zyx"), unique("Quo"), unique("PHI-")
    identified = StudySpec(patient_id=mrn, patient_name=f"{surname}^{given}",
                           birth_date="19611203", series=1, instances_per_series=2)
    pseudonym = unique("PSEUDO")
    deidentified = StudySpec(patient_id=pseudonym, patient_name=f"{pseudonym}^",
                             birth_date="", deidentified=True, series=1,
                             instances_per_series=1)
    identified_study = upload_study(atrium, identified)
    deidentified_study = upload_study(atrium, deidentified)
    clinician = Client(atrium, "clinician", "Default")
    researcher = Client(atrium, "researcher", "Default")

    full = clinician.get(f"/api/studies/{identified_study}").json()
    series_id = full["series"][0]["id"]
    instance_id = clinician.get(f"/api/series/{series_id}/instances").json()["items"][0]["id"]
    patient_id = full["patient_id"]
    assert clinician.get(f"/api/patients/{patient_id}").json()["last_name"] == surname

    answers = [researcher.get(path, **params) for path, params in [
        ("/api/patients", {"limit": 1000}), ("/api/patients", {"q": surname}),
        ("/api/patients", {"mrn": mrn}), ("/api/studies", {"limit": 1000}),
        ("/api/studies", {"patient_id": patient_id}),
        ("/api/studies", {"study_instance_uid": identified.study_uid}),
    ]]
    refused = [researcher.get(path) for path in [
        f"/api/patients/{patient_id}", f"/api/studies/{identified_study}",
        f"/api/series/{series_id}", f"/api/series/{series_id}/instances",
        f"/api/instances/{instance_id}"]]
    assert all(is_problem(answer, 404) for answer in refused)
    for answer in answers:
        assert answer.status_code == 200
        for secret in (surname, given, mrn, "1961-12-03", "19611203", identified.study_uid):
            assert secret not in answer.text
        assert all(item.get("is_deidentified", item.get("patient_is_deidentified"))
                   for item in answer.json()["items"])
    assert researcher.post(f"/api/studies/{identified_study}/deidentify").status_code == 403

    visible = researcher.get(f"/api/studies/{deidentified_study}")
    assert visible.status_code == 200 and visible.json()["patient_is_deidentified"]
    pseudo_patient = researcher.get(f"/api/patients/{visible.json()['patient_id']}").json()
    assert pseudo_patient["mrn"] == pseudonym
    assert pseudo_patient["id"] in ids(researcher.items("/api/patients", q=pseudonym))
    series = visible.json()["series"][0]["id"]
    assert researcher.get(f"/api/series/{series}").status_code == 200


def test_a_clinicians_read_of_an_identified_patient_is_audited_as_phi(
        atrium: AtriumUnderTest) -> None:
    org = unique("Audit ")
    clinician = Client(atrium, "clinician", org)
    identified = clinician.post("/api/patients", {"mrn": unique("A-"), "last_name": "Doe"})
    pseudonymous = clinician.post("/api/patients", {"mrn": unique("A-"),
                                                    "is_deidentified": True})
    for created in (identified, pseudonymous):
        assert clinician.get(created.headers["Location"]).status_code == 200

    def phi_flags(patient_id: str) -> list[bool]:
        return [row[0] for row in atrium.sql(
            "SELECT phi_accessed FROM audit_log WHERE resource_id = %s "
            "AND action = 'GET /api/patients/{id}'", (patient_id,))]

    assert phi_flags(identified.json()["id"]) == [True]
    assert phi_flags(pseudonymous.json()["id"]) == [False]


# --------------------------------------------------------- de-identification

def test_a_study_is_de_identified_into_the_same_organization(
        atrium: AtriumUnderTest, tmp_path: Path) -> None:
    surname = unique("Orig")
    spec = StudySpec(patient_id=unique("DEID-"), patient_name=f"{surname}^Ann",
                     series=2, instances_per_series=2)
    source = send_study(atrium, spec, tmp_path)
    clinician = Client(atrium, "clinician", MAPPED_ORGANIZATION)
    researcher = Client(atrium, "researcher", MAPPED_ORGANIZATION)
    assert is_problem(researcher.get(f"/api/studies/{source}"), 404)
    assert is_problem(Client(atrium, "clinician", "Default").post(
        f"/api/studies/{source}/deidentify"), 404)

    started = clinician.post(f"/api/studies/{source}/deidentify")
    assert started.status_code == 202, started.text
    job = started.json()
    assert started.headers["Location"] == f"/api/jobs/{job['id']}"
    assert job["kind"] == "deidentify" and job["status"] in ("queued", "running")

    def finished() -> bool:
        nonlocal job
        job = clinician.get(f"/api/jobs/{job['id']}").json()
        return job["status"] in ("succeeded", "failed")

    wait_until(finished, 180, interval=0.5, what="the de-identification job")
    assert job["status"] == "succeeded", job["error"]
    assert job["progress_done"] == job["progress_total"] == 100
    result = job["result"]
    assert result["mirrored"] is True and result["study_instance_uid"] != spec.study_uid
    assert job["id"] in ids(clinician.items("/api/jobs", kind="deidentify"))
    assert job["id"] not in ids(researcher.items("/api/jobs"))

    copy = researcher.get(f"/api/studies/{result['study_id']}")
    assert copy.status_code == 200, copy.text
    assert copy.json()["patient_is_deidentified"] is True
    assert (copy.json()["number_of_series"], copy.json()["number_of_instances"]) == (2, 4)
    patient = researcher.get(f"/api/patients/{result['patient_id']}")
    assert patient.status_code == 200 and surname not in patient.text
    assert is_problem(researcher.get(f"/api/studies/{source}"), 404)
    assert is_problem(Client(atrium, "researcher", "Default").get(
        f"/api/studies/{result['study_id']}"), 404)
    assert is_problem(clinician.post(f"/api/studies/{result['study_id']}/deidentify"), 409)
