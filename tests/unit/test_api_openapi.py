"""The OpenAPI 3.1 document generated from route declarations, and its route."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from openapi_spec_validator import validate

from atrium.api import openapi
from atrium.api.http import PUBLIC, Request, Route, Router, json_response
from atrium.api.openapi import openapi_document
from tests.unit.test_api_example_resource import NotesApp
from tests.unit.test_api_example_resource import routes as notes_routes

INFO = {"title": "Atrium", "version": "test"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    health = Route("GET", "/api/health", lambda _r: json_response({}), auth=PUBLIC)
    upload = Route("POST", "/api/slides", lambda _r: json_response({}), auth=("clinician",),
                   media_types=("image/tiff", "application/octet-stream"), max_body_bytes=2**31)
    return openapi_document([health, upload, *notes_routes(NotesApp())], INFO)


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"
    json.dumps(document)  # plain JSON throughout


def test_paths_use_plain_parameter_names_with_their_schemas(document: dict[str, Any]) -> None:
    read = document["paths"]["/api/notes/{id}"]["get"]
    assert read["parameters"] == [{"name": "id", "in": "path", "required": True,
                                   "schema": {"type": "string", "format": "uuid"}}]
    assert set(document["paths"]["/api/notes/{id}"]) == {"get", "patch", "delete"}


def test_query_parameters_come_from_the_query_schema(document: dict[str, Any]) -> None:
    parameters = {p["name"]: p for p in document["paths"]["/api/notes"]["get"]["parameters"]}
    assert set(parameters) == {"limit", "cursor", "kind", "ids", "created_from", "q"}
    assert parameters["limit"]["schema"]["maximum"] == 1000
    assert parameters["limit"]["schema"]["default"] == 50
    assert (parameters["ids"]["style"], parameters["ids"]["explode"]) == ("form", False)
    assert parameters["kind"]["required"] is False


def test_bodies_and_answers_come_from_the_route(document: dict[str, Any]) -> None:
    create = document["paths"]["/api/notes"]["post"]
    schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["title", "kind"] and schema["additionalProperties"] is False
    assert create["responses"]["201"]["content"]["application/json"]["schema"]["properties"][
        "id"]["format"] == "uuid"
    assert create["responses"]["409"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"}
    upload = document["paths"]["/api/slides"]["post"]
    assert set(upload["requestBody"]["content"]) == {"image/tiff", "application/octet-stream"}


def test_implied_problem_answers_are_documented(document: dict[str, Any]) -> None:
    def statuses(path: str, method: str) -> set[str]:
        return set(document["paths"][path][method]["responses"])

    assert statuses("/api/health", "get") == {"200"}
    assert statuses("/api/notes/{id}", "get") == {"200", "400", "401", "404"}
    assert statuses("/api/notes", "post") == {"201", "400", "401", "403", "409", "413", "415"}
    bad = document["paths"]["/api/notes"]["get"]["responses"]["400"]
    assert bad == {"$ref": "#/components/responses/BadRequest"}
    assert "WWW-Authenticate" in document["components"]["responses"]["Unauthorized"]["headers"]


def test_every_route_needs_a_bearer_token_except_public_ones(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["security"] == [{"bearer": []}]
    assert document["paths"]["/api/health"]["get"]["security"] == []
    create = document["paths"]["/api/notes"]["post"]
    assert "security" not in create
    assert create["x-atrium-access"] == ["clinician", "researcher"]


@dataclass
class FakeApp:
    router: Router = field(default_factory=lambda: Router([]))


def test_the_route_serves_the_document_of_every_route_including_itself() -> None:
    app = FakeApp()
    app.router = Router([*notes_routes(NotesApp()), *openapi.routes(app)])
    response = app.router.handle(Request("GET", "/api/openapi.json"))
    assert response.status == 200
    served = json.loads(response.body)
    validate(served)
    assert served["paths"]["/api/openapi.json"]["get"]["security"] == []
    assert "/api/notes" in served["paths"]
    assert served["info"]["title"] == "Atrium"
