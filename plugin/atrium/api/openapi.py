"""The OpenAPI 3.1 document, generated from the routes' own declarations, and the
public route that serves it (``GET /api/openapi.json``).

Nothing here is written by hand per resource: paths and their parameters come from
route patterns, query parameters from the ``query`` schema, request bodies from
``body``, answers from ``responses`` plus the problem documents the contract
implies (400 when there are inputs, 401/403 unless public, 404 when the path names
a resource, 413/415 when there is a body). OpenAPI 3.1 schemas are JSON Schema
2020-12, so the schemas that validate requests are published unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any, Protocol

from atrium import errors
from atrium.api.http import (
    AUTHENTICATED,
    JSON,
    PUBLIC,
    Reply,
    Request,
    Response,
    Route,
    Router,
    json_response,
)
from atrium.api.params import is_json_media_type

__all__ = ["openapi_document", "routes"]

PROBLEM = "application/problem+json"

# Each problem status has one component response, named after its exception class.
_PROBLEMS: dict[int, type[errors.ApiError]] = {
    cls.status: cls for cls in (
        errors.BadRequest, errors.Unauthorized, errors.Forbidden, errors.NotFound,
        errors.MethodNotAllowed, errors.Conflict, errors.PayloadTooLarge,
        errors.UnsupportedMediaType, errors.ServiceUnavailable)
}


def _problem_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, cls in _PROBLEMS.items():
        response: dict[str, Any] = {
            "description": cls.title,
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {
                "description": "Bearer", "schema": {"type": "string"}}}
        responses[cls.__name__] = response
    return responses


def _reply(status: int, reply: Reply) -> dict[str, Any]:
    if reply.schema is None and status >= 400:
        return {"description": reply.description,
                "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    answer: dict[str, Any] = {"description": reply.description}
    if reply.schema is not None:
        answer["content"] = {reply.media_type: {"schema": reply.schema}}
        answer["content"].update({media_type: {"schema": schema}
                                  for media_type, schema in reply.alternatives.items()})
    return answer


def _implied_problems(route: Route) -> list[int]:
    statuses = []
    if route.path.params or route.query_parameters or route.takes_body:
        statuses.append(400)
    if not route.is_public:
        statuses.append(401)
        if route.auth is not AUTHENTICATED:
            statuses.append(403)
    if route.path.params:
        statuses.append(404)
    if route.takes_body:
        statuses += [413, 415]
    return statuses


def _responses(route: Route) -> dict[str, Any]:
    answers = {str(status): _reply(status, reply)
               for status, reply in sorted(route.responses.items())}
    if not any(200 <= status < 300 for status in route.responses):
        answers["200"] = {"description": "OK"}
    for status in _implied_problems(route):
        answers.setdefault(
            str(status), {"$ref": f"#/components/responses/{_PROBLEMS[status].__name__}"})
    return dict(sorted(answers.items()))


def _parameters(route: Route) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in route.path.params.items()]
    required = set((route.query or {}).get("required", ()))
    for name, schema in route.query_parameters.items():
        parameter: dict[str, Any] = {"name": name, "in": "query",
                                     "required": name in required, "schema": schema}
        if "description" in schema:
            parameter["description"] = schema["description"]
        if schema.get("type") == "array":
            parameter.update(style="form", explode=False)  # a,b,c
        parameters.append(parameter)
    return parameters


def _request_body(route: Route) -> dict[str, Any]:
    content = {media_type: ({"schema": route.body} if is_json_media_type(media_type)
                            and route.body is not None else {})
               for media_type in route.media_types}
    return {"required": True, "content": content}


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.operation_id}
    if route.summary:
        operation["summary"] = route.summary
    if route.description:
        operation["description"] = route.description
    if route.tags:
        operation["tags"] = list(route.tags)
    parameters = _parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.takes_body:
        operation["requestBody"] = _request_body(route)
    operation["responses"] = _responses(route)
    if route.is_public:
        operation["security"] = []
    else:
        operation["x-atrium-access"] = [str(item) for item in route.roles] or ["authenticated"]
    return operation


def openapi_document(routes: Iterable[Route], info: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``; ``info`` needs ``title`` and
    ``version``. Every operation requires a bearer token unless its route is
    :data:`~atrium.api.http.PUBLIC`; ``x-atrium-access`` lists the roles (or
    permissions) allowed."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path.template, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": dict(info),
        "paths": paths,
        "components": {
            "schemas": {"Problem": errors.PROBLEM_SCHEMA},
            "responses": _problem_responses(),
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "An OpenID Connect access token of the configured issuer."}},
        },
        "security": [{"bearer": []}],
    }


# ------------------------------------------------------------------------- route

class _HasRouter(Protocol):
    @property
    def router(self) -> Router: ...


def _info() -> dict[str, Any]:
    try:
        version = metadata.version("atrium")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    return {"title": "Atrium", "version": version,
            "description": "Atrium's REST API: organizations, patients, the mirrored DICOM "
                           "hierarchy, slides, recordings, annotations, models, predictions.",
            "license": {"name": "AGPL-3.0-or-later", "identifier": "AGPL-3.0-or-later"}}


def routes(app: _HasRouter) -> list[Route]:
    """``GET /api/openapi.json`` over every route of ``app.router`` — read when asked,
    so the route can be part of the router it describes."""

    @functools.lru_cache(maxsize=1)
    def document(all_routes: tuple[Route, ...]) -> Response:
        return json_response(openapi_document(all_routes, _info()))

    def get_openapi(_request: Request) -> Response:
        return document(app.router.routes)

    return [Route("GET", "/api/openapi.json", get_openapi, summary="This API's OpenAPI 3.1 "
                  "document", tags=("meta",), auth=PUBLIC,
                  responses={200: Reply("The OpenAPI document", {"type": "object"}, JSON)})]
