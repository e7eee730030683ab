"""Schemathesis against the served OpenAPI document: for every operation, generated
valid and invalid requests — with an admin's token, then a researcher's — never get
a 5xx, and every answer conforms to what the document declares (status, media type,
headers, schema), with all of schemathesis's checks on, less the exemptions stated
below. Then every route reading one resource is called on real resources and its
answer checked the same way: random ids only ever reach the 404s.

Kept modest: :data:`EXAMPLES` examples per operation for the admin, who reaches
every handler, and :data:`RESEARCHER_EXAMPLES` for the researcher, whose requests
mostly meet the same scope checks; no stateful phase. The callers work in the
organization that C-STORE from the mapped AE title fills, seeded with identified
and de-identified data so that lists have items to check.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from tests.integration.conftest import AtriumUnderTest
from tests.integration.test_api_resources import MAPPED_ORGANIZATION, Client, send_study, unique
from tests.support.dicomgen import StudySpec

pytestmark = pytest.mark.integration

ORGANIZATION = MAPPED_ORGANIZATION
EXAMPLES = 25
RESEARCHER_EXAMPLES = 10

# Uploads (application/dicom) get the generated value as raw bytes: junk that a
# DICOM parser must refuse with a 4xx.
schemathesis.serializer.alias("application/dicom", "application/octet-stream")


def load(atrium: AtriumUnderTest, role: str) -> Any:
    """The document, with a token of ``role`` as the bearer scheme's credential (so
    that schemathesis knows it, and also tries requests without it). Text with NUL
    is refused by design (PostgreSQL cannot store it), so it is not generated."""
    token = atrium.token(role, ORGANIZATION, f"fuzz-{role}")
    config = SchemathesisConfig.from_dict({
        "generation": {"allow-x00": False},
        "auth": {"openapi": {"bearer": {"bearer": token}}},
    })
    return schemathesis.openapi.from_url(f"{atrium.url}/api/openapi.json", config=config)


@pytest.fixture(scope="module")
def seeded(atrium: AtriumUnderTest, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, str]:
    """One resource of each kind in the organization: collection → id."""
    directory: Path = tmp_path_factory.mktemp("fuzz")
    study = send_study(atrium, StudySpec(patient_id=unique("FZ-"), series=1,
                                         instances_per_series=2), directory)
    send_study(atrium, StudySpec(patient_id=unique("FZ-"), deidentified=True, series=1,
                                 instances_per_series=1), directory)
    clinician = Client(atrium, "clinician", ORGANIZATION, user="fuzz-clinician")
    for deidentified in (False, True):
        assert clinician.post("/api/patients", {"mrn": unique("FZ-"), "last_name": "Fuzz",
                                                "is_deidentified": deidentified}
                              ).status_code == 201
    admin = Client(atrium, "admin", ORGANIZATION, user="fuzz-admin")
    read = admin.get(f"/api/studies/{study}").json()
    series = read["series"][0]["id"]
    me = admin.get("/api/me").json()
    job = atrium.scalar("INSERT INTO jobs (kind, status, organization_id, created_by) "
                        "VALUES ('deidentify', 'succeeded', %s, %s) RETURNING id",
                        (me["organization_id"], me["id"]))
    return {"organizations": me["organization_id"], "users": me["id"],
            "patients": read["patient_id"], "studies": study, "series": series,
            "instances": admin.get(f"/api/series/{series}/instances").json()["items"][0]["id"],
            "jobs": str(job)}


@pytest.fixture(scope="module")
def admin_schema(atrium: AtriumUnderTest, seeded: dict[str, str]) -> Any:
    return load(atrium, "admin")


@pytest.fixture(scope="module")
def researcher_schema(atrium: AtriumUnderTest, seeded: dict[str, str]) -> Any:
    return load(atrium, "researcher")


def answered_by_orthanc(response: requests.Response) -> bool:
    """Orthanc's HTTP server refuses some requests before any plugin sees them — an
    unknown method (PATCH, TRACE), a malformed header — with a bare 400 (plain text
    or no type at all) that Atrium can neither shape nor document; Atrium's own
    answers are always JSON."""
    return response.status_code == 400 and "json" not in response.headers.get(
        "Content-Type", "")


def refused_only_the_cursor(response: requests.Response) -> bool:
    """A cursor is opaque: any the server did not issue is refused (400) however
    well it matches the parameter's pattern, so a made-up one is not valid data."""
    if response.status_code != 400:
        return False
    errors = response.json().get("errors", [])
    return bool(errors) and all(e.get("field") == "cursor" for e in errors)


# Methods Orthanc's HTTP server answers on a kept-alive connection. Any other (TRACE,
# QUERY) it refuses itself with a bare 400 and closes the connection, without
# reading the request's body; with the body left unread the close can reach the
# client as a reset before the 400 does: the likeliest cause of a reset that failed
# CI once (inferred from the fuzzer sending these methods with bodies; not reproduced).
KEPT_ALIVE_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
                                "CONNECT"})


def call_and_check(case: Any) -> requests.Response | None:
    try:
        response = case.call(timeout=30)
    except requests.ConnectionError:
        if case.method.upper() in KEPT_ALIVE_METHODS:
            raise
        return None  # refused by Orthanc's HTTP server: Atrium never saw it
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if answered_by_orthanc(response):
        return response
    excluded = [schemathesis.checks.positive_data_acceptance] \
        if refused_only_the_cursor(response) else []
    case.validate_response(response, excluded_checks=excluded)
    return response


_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))


@schemathesis.pytest.from_fixture("admin_schema").parametrize()
@_SETTINGS
def test_an_admin_gets_no_5xx_and_documented_answers(case: Any) -> None:
    call_and_check(case)


@schemathesis.pytest.from_fixture("researcher_schema").parametrize()
@settings(_SETTINGS, max_examples=RESEARCHER_EXAMPLES)
def test_a_researcher_gets_no_5xx_and_documented_answers(case: Any) -> None:
    call_and_check(case)


@pytest.mark.parametrize("role", ["admin", "researcher"])
def test_reads_of_real_resources_conform_to_their_schemas(
        atrium: AtriumUnderTest, seeded: dict[str, str], role: str) -> None:
    schema = load(atrium, role)
    bearer = {"Authorization": f"Bearer {atrium.token(role, ORGANIZATION, f'fuzz-{role}')}"}
    checked = set()
    for path, operations in schema.raw_schema["paths"].items():
        if "get" not in operations or "{id}" not in path:
            continue
        collection = path.split("/")[2]
        if collection not in seeded:
            continue
        names = re.findall(r"\{(\w+)\}", path)
        parameters = {name: seeded[collection] if name == "id" else "0" for name in names}
        case = schema[path]["GET"].Case(path_parameters=parameters, headers=bearer)
        response = call_and_check(case)
        assert response is not None, path
        assert response.status_code in (200, 404), (path, response.text[:300])
        if response.status_code == 200:
            checked.add(path)
    # A researcher reads the de-identified world only (the seeded study is identified)
    # and only their own jobs (the seeded one is the admin's).
    wanted = {"/api/organizations/{id}", "/api/users/{id}"}
    if role == "admin":
        wanted |= {"/api/jobs/{id}", "/api/patients/{id}", "/api/studies/{id}",
                   "/api/series/{id}",
                   "/api/series/{id}/instances", "/api/instances/{id}"}
    assert wanted <= checked
