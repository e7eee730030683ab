"""No route lets a caller reach another organization's data (SPEC §7).

Driven by the served OpenAPI document, so a route added later is covered without
touching this file: every operation whose path names a resource (``{id}``) is
called, for each of its methods and with a valid body where it takes one, by an
admin of organization A (every permission) on a resource of organization B — and
must answer 404 exactly like a missing id, never 403 nor any hint. Every list is
read to its end by A's callers and must hold none of B's rows.

B is "Radiology North" (DICOM sent by C-STORE from the AE title mapped to it) with
a patient made through the API, a user and a job. A collection this file has no
fixture for gets B's resource from B's own list, or by creating one through B's
own ``POST`` with a minimal valid body; a route whose resource cannot be found
either way fails, naming the route.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import AtriumUnderTest
from tests.integration.test_api_resources import (
    MAPPED_ORGANIZATION,
    Client,
    send_study,
    unique,
)
from tests.support.dicomgen import StudySpec
from tests.support.slidegen import write_pyramid_tiff

pytestmark = pytest.mark.integration

GLOBAL_COLLECTIONS = frozenset({"models"})
"""SPEC §7: ``ml_models`` is the one platform-wide registry; every organization
sees every model, so its routes are not organization-scoped."""

_PARAM = re.compile(r"\{(\w+)\}")


# ---------------------------------------------------- minimal valid instances

def minimal(schema: dict[str, Any], document: dict[str, Any]) -> Any:
    """The smallest instance of ``schema`` (a JSON Schema of the OpenAPI document)
    that validates: required fields only (one field when at least one is needed)."""
    if "$ref" in schema:
        target: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return minimal(target, document)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            options = [s for s in schema[combinator] if s.get("type") != "null"]
            return minimal(options[0], document)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return next(value for value in schema["enum"] if value is not None)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    return _MINIMAL[kind](schema, document)


def _object(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties", {})
    names = list(schema.get("required", []))
    if not names and schema.get("minProperties", 0) > 0:
        names = list(properties)[:schema["minProperties"]]
    return {name: minimal(properties[name], document) for name in names}


def _string(schema: dict[str, Any], _: dict[str, Any]) -> str:
    by_format = {"uuid": str(uuid.uuid4()), "date": "2000-01-01",
                 "date-time": "2000-01-01T00:00:00Z", "email": "x@example.org"}
    if schema.get("format") in by_format:
        return by_format[schema["format"]]
    return "x" * max(1, schema.get("minLength", 1))


def _number(schema: dict[str, Any], _: dict[str, Any]) -> int:
    low = schema.get("minimum", 0)
    if "exclusiveMinimum" in schema:
        low = max(low, schema["exclusiveMinimum"] + 1)
    return max(int(low), 0) if schema.get("maximum", 1) >= 0 else int(schema["maximum"])


_MINIMAL: dict[str, Any] = {
    "object": _object,
    "array": lambda s, d: [minimal(s.get("items", {}), d)] * s.get("minItems", 0),
    "string": _string,
    "integer": _number,
    "number": _number,
    "boolean": lambda s, d: False,
    "null": lambda s, d: None,
}


# --------------------------------------------------------------- the world

@dataclass
class World:
    atrium: AtriumUnderTest
    document: dict[str, Any]
    outsider_org: str  # organization A
    outsider: Client  # admin of organization A
    owner: Client  # admin of organization B
    foreign: dict[str, str]  # collection → id of one of B's resources
    own_patient: str  # one of A's, so that A's lists are not trivially empty
    all_foreign: set[str] = field(default_factory=set)

    def foreign_id(self, collection: str) -> str:
        """B's resource of ``collection``: a fixture's, else B's first listed, else
        one created through B's own POST."""
        if collection not in self.foreign:
            self.foreign[collection] = self._discover(collection)
            self.all_foreign.add(self.foreign[collection])
        return self.foreign[collection]

    def _discover(self, collection: str) -> str:
        path = f"/api/{collection}"
        operations = self.document["paths"].get(path, {})
        if "get" in operations:
            listed = self.owner.get(path)
            if listed.status_code == 200 and listed.json().get("items"):
                return str(listed.json()["items"][0]["id"])
        if "post" in operations:
            body = request_body(operations["post"], self.document)
            created = self.owner.call("POST", path, **body)
            if created.status_code in (200, 201, 202) and "id" in created.json():
                return str(created.json()["id"])
        pytest.fail(f"No resource of {path} in organization B: add a fixture for it in "
                    f"{Path(__file__).name} so that its routes are checked across "
                    "organizations")


def required_query(operation: dict[str, Any], document: dict[str, Any]) -> str:
    """``?name=value&…`` of an operation's required query parameters (minimal values),
    so that a route answers about its resource rather than about a missing parameter."""
    values = {p["name"]: minimal(p.get("schema", {}), document)
              for p in operation.get("parameters", [])
              if p.get("in") == "query" and p.get("required")}
    return ("?" + "&".join(f"{name}={value}" for name, value in values.items())) if values else ""


def request_body(operation: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """``requests`` keyword arguments carrying a minimal valid body, if any."""
    content = operation.get("requestBody", {}).get("content", {})
    if not content:
        return {}
    media_type, spec = next(iter(content.items()))
    if "json" in media_type:
        return {"json": minimal(spec.get("schema", {}), document)}
    return {"data": b"x", "headers": {"Content-Type": media_type}}


@pytest.fixture(scope="module")
def world(atrium: AtriumUnderTest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:
    owner = Client(atrium, "admin", MAPPED_ORGANIZATION, user=unique("b-admin-"))
    clinician_b = Client(atrium, "clinician", MAPPED_ORGANIZATION, user=unique("b-clin-"))
    org_b = owner.get("/api/organizations").json()["items"][0]["id"]
    user_b = owner.get("/api/me").json()["id"]
    patient_b = clinician_b.post("/api/patients", {"mrn": unique("B-"),
                                                   "last_name": "Foreign"}).json()["id"]
    study_b = send_study(atrium, StudySpec(patient_id=unique("B-"), series=1,
                                           instances_per_series=1),
                         tmp_path_factory.mktemp("isolation"))
    study = owner.get(f"/api/studies/{study_b}").json()
    series_b = study["series"][0]["id"]
    instance_b = owner.get(f"/api/series/{series_b}/instances").json()["items"][0]["id"]
    job_b = str(atrium.scalar(
        "INSERT INTO jobs (kind, status, organization_id, created_by, parameters) "
        "VALUES ('deidentify', 'succeeded', %s, %s, '{}') RETURNING id", (org_b, user_b)))
    annotation_b = owner.post("/api/annotations", {
        "annotation_type": "dicom", "target_type": "instance", "target_id": instance_b,
        "label": "B's", "coordinates": {"type": "point", "points": [{"x": 1, "y": 2}]}}
    ).json()["id"]
    model = owner.post("/api/models", {"model_name": unique("isolation-"), "model_version": "1",
                                       "model_type": "segmentation"}).json()["id"]
    prediction_b = owner.post("/api/predictions", {
        "model_id": model, "target_type": "study", "target_id": study_b,
        "results": {"class": "B's"}}).json()["id"]
    assert requests.put(f"{atrium.url}/api/predictions/{prediction_b}/segmentation/mask",
                        data=b"B's mask", timeout=30, headers={
                            **owner.headers, "Content-Type": "application/octet-stream"}
                        ).status_code == 200
    slide_file = io.BytesIO()
    write_pyramid_tiff(slide_file, 300, 200, tile=256, levels=1, compression="zlib")
    slide_b = requests.post(f"{atrium.url}/api/slides", timeout=30,
                            headers={**owner.headers, "X-HTTP-Method-Override": "PUT"},
                            files={"file": ("b.tiff", slide_file.getvalue())},
                            data={"slide_id": unique("B-")}).json()["id"]
    upload_b = owner.post("/api/uploads", {"filename": "b.svs", "size": 10}).json()["id"]
    recording_b = owner.post("/api/recordings", {
        "recording_type": "ECG", "sampling_rate": 10, "patient_id": patient_b,
        "channels": [{"name": "I", "samples": [1, 2, 3]}]}).json()["id"]
    foreign = {"organizations": org_b, "users": user_b, "patients": patient_b,
               "studies": study_b, "series": series_b, "instances": instance_b,
               "jobs": job_b, "annotations": annotation_b, "predictions": prediction_b,
               "slides": slide_b, "uploads": upload_b, "recordings": recording_b}

    outsider_org = unique("Isolated ")
    outsider = Client(atrium, "admin", outsider_org, user=unique("a-admin-"))
    own_patient = outsider.post("/api/patients", {"mrn": unique("A-")}).json()["id"]
    document = requests.get(f"{atrium.url}/api/openapi.json", timeout=10).json()
    built = World(atrium, document, outsider_org, outsider, owner, foreign, own_patient,
                  {*foreign.values(), study["patient_id"]})
    yield built
    # B's resources are untouched by everything A tried.
    assert atrium.scalar("SELECT deleted_at FROM organizations WHERE id = %s", (org_b,)) is None
    assert atrium.scalar("SELECT deleted_at FROM patients WHERE id = %s", (patient_b,)) is None
    assert atrium.scalar("SELECT count(*) FROM patients WHERE id = %s", (patient_b,)) == 1


def id_operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Operations on one resource, but for public ones (``security: []``): a page
    such as the slide viewer holds no data, and answers the same for any id."""
    return [(path, method, operation) for path, operations in document["paths"].items()
            if "{id}" in path for method, operation in operations.items()
            if operation.get("security") != []]


# ------------------------------------------------------------------- tests

def test_the_document_has_routes_to_check(world: World) -> None:
    checked = {path.split("/")[2] for path, _, _ in id_operations(world.document)}
    assert {"organizations", "users", "patients", "studies", "series", "instances",
            "jobs"} <= checked


def test_every_route_naming_another_organizations_resource_answers_404(world: World) -> None:
    failures = []
    for path, method, operation in id_operations(world.document):
        collection = path.split("/")[2]
        if collection in GLOBAL_COLLECTIONS:
            continue
        foreign, missing = world.foreign_id(collection), str(uuid.uuid4())
        answers = []
        for resource in (foreign, missing):
            url = _PARAM.sub(lambda m, r=resource: r if m.group(1) == "id" else "0", path)
            url += required_query(operation, world.document)
            body = request_body(operation, world.document)
            # An upload's Content-Type goes with the token, not instead of it.
            headers = {**world.outsider.headers, **body.pop("headers", {})}
            answers.append(requests.request(method.upper(), world.outsider.url + url,
                                            headers=headers, timeout=30, **body))
        theirs, nobodys = answers
        if theirs.status_code != 404 or not theirs.headers.get(
                "Content-Type", "").startswith("application/problem+json"):
            failures.append(f"{method.upper()} {path}: {theirs.status_code} {theirs.text[:200]}")
        elif theirs.text.replace(foreign, "ID") != nobodys.text.replace(missing, "ID"):
            failures.append(f"{method.upper()} {path}: the answer differs from a missing id's: "
                            f"{theirs.text[:200]} / {nobodys.text[:200]}")
    assert not failures, "\n".join(failures)


def test_a_researcher_of_another_organization_gets_404_or_403_never_data(
        world: World) -> None:
    researcher = Client(world.atrium, "researcher", world.outsider_org, user=unique("a-res-"))
    for path, method, operation in id_operations(world.document):
        collection = path.split("/")[2]
        if method != "get" or collection in GLOBAL_COLLECTIONS:
            continue
        foreign = world.foreign_id(collection)
        url = _PARAM.sub(lambda m, r=foreign: r if m.group(1) == "id" else "0", path)
        answer = researcher.get(url + required_query(operation, world.document))
        assert answer.status_code in (403, 404), (path, answer.status_code, answer.text[:200])


def list_paths(document: dict[str, Any]) -> list[str]:
    """GET routes without path parameters that answer a page of items."""
    paths = []
    for path, operations in document["paths"].items():
        operation = operations.get("get")
        if operation is None or "{" in path:
            continue
        answer = operation["responses"].get("200", {})
        schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
        if "items" in schema.get("properties", {}):
            paths.append(path)
    return paths


def every_id(client: Client, path: str) -> set[str]:
    found: set[str] = set()
    cursor = None
    for _ in range(50):
        answer = client.get(path, limit=1000, **({"cursor": cursor} if cursor else {}))
        if answer.status_code == 403:
            return found
        assert answer.status_code == 200, (path, answer.text[:200])
        page = answer.json()
        found |= {str(item.get("id")) for item in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return found
    pytest.fail(f"{path} did not end within 50 pages")


def test_lists_never_hold_another_organizations_rows(world: World) -> None:
    for collection in ("organizations", "users", "patients", "studies", "jobs"):
        world.foreign_id(collection)
    lists = list_paths(world.document)
    assert {"/api/organizations", "/api/users", "/api/patients", "/api/studies",
            "/api/jobs"} <= set(lists)
    for collection in {path.split("/")[2] for path in lists} - GLOBAL_COLLECTIONS:
        world.foreign_id(collection)
    outsiders = [world.outsider,
                 Client(world.atrium, "clinician", world.outsider_org, user=unique("a-clin-")),
                 Client(world.atrium, "researcher", world.outsider_org, user=unique("a-res-"))]
    for client in outsiders:
        for path in lists:
            if path.split("/")[2] in GLOBAL_COLLECTIONS:
                continue
            leaked = every_id(client, path) & world.all_foreign
            assert not leaked, f"{path} shows another organization's rows: {leaked}"
    assert world.own_patient in every_id(world.outsider, "/api/patients")
    assert world.own_patient not in every_id(world.owner, "/api/patients")
