"""The router: routing, the order of checks, problem documents, JSON answers, route
declarations refused at start-up, and no 5xx whatever a client sends."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import replace
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import PoolTimeout

from atrium.api.http import (
    AUTHENTICATED,
    PUBLIC,
    MiB,
    Request,
    Response,
    Route,
    Router,
    json_response,
)
from atrium.api.pagination import PAGE_PARAMETERS
from atrium.api.schema import array, boolean, date, integer, number, obj, string
from atrium.api.schema import uuid as uid
from atrium.errors import MethodNotAllowed, NotFound, Unauthorized
from tests.support.app_routes import app_routes

ID = "123e4567-e89b-12d3-a456-426614174000"


def echo(request: Request) -> Response:
    return json_response({"params": request.params, "args": request.args, "json": request.json,
                          "route": request.route.operation_id if request.route else None,
                          "caller": request.caller})


def failing(_request: Request) -> Response:
    raise RuntimeError("a bug with a secret in it")


SEARCH = obj({**PAGE_PARAMETERS, "name": string(max_length=50), "flag": boolean(),
              "score": number(minimum=0, maximum=1), "day": date(), "ids": array(uid()),
              "count": integer(minimum=0, maximum=10)})
THING = obj({"name": string(max_length=50), "size": integer(minimum=0)}, required=["name"])

ROUTES = [
    Route("GET", "/api/things", echo, query=SEARCH),
    Route("POST", "/api/things", echo, body=THING, max_body_bytes=4096),
    Route("GET", "/api/things/{id:uuid}", echo, auth=AUTHENTICATED),
    Route("GET", "/api/things/search", echo, auth=PUBLIC),
    Route("GET", "/api/things/{id:uuid}/tiles/{level:int}", echo),
    Route("PUT", "/api/uploads/{name}", echo, media_types=("application/octet-stream",),
          max_body_bytes=16),
    Route("GET", "/api/broken", failing),
]


@pytest.fixture
def router() -> Router:
    return Router(ROUTES)


def answer(router: Router, request: Request) -> tuple[int, Any]:
    response = router.handle(request)
    return response.status, json.loads(response.body) if response.body else None


# ---------------------------------------------------------------------- routing

def test_path_parameters_arrive_typed(router: Router) -> None:
    status, body = answer(router, Request("GET", f"/api/things/{ID}/tiles/3"))
    assert status == 200
    assert body["params"] == {"id": ID, "level": 3}
    assert body["route"] == "get_api_things_id_tiles_level"


def test_handlers_receive_python_values_not_text(router: Router) -> None:
    seen: list[Request] = []

    def keep(request: Request) -> Response:
        seen.append(request)
        return json_response({})

    capture = Route("GET", "/api/capture", keep, query=SEARCH)
    captured = Router([capture]).handle(Request("GET", "/api/capture", query={
        "flag": "true", "score": "0.5", "day": "2024-02-29", "ids": f"{ID},{ID}",
        "count": "7"}))
    assert captured.status == 200
    args = seen[0].args
    assert args == {"flag": True, "score": 0.5, "day": dt.date(2024, 2, 29),
                    "ids": [uuid.UUID(ID)] * 2, "count": 7, "limit": 50}


def test_a_literal_segment_wins_over_a_parameter(router: Router) -> None:
    status, body = answer(router, Request("GET", "/api/things/search"))
    assert (status, body["route"]) == (200, "get_api_things_search")


def test_a_malformed_uuid_in_the_path_is_a_400_not_a_404(router: Router) -> None:
    status, problem = answer(router, Request("GET", "/api/things/123e4567'; DROP TABLE x;--"))
    assert status == 400
    assert problem["errors"] == [{"in": "path", "field": "id", "message": problem[
        "errors"][0]["message"]}]
    assert "UUID" in problem["detail"]


def test_unknown_paths_and_methods_are_404_and_405(router: Router) -> None:
    assert answer(router, Request("GET", "/api/nothing"))[0] == 404
    response = router.handle(Request("DELETE", "/api/things"))
    assert response.status == 405
    assert response.headers["Allow"] == "GET, POST"
    assert response.content_type == "application/problem+json"


def test_a_bug_is_a_500_problem_without_details(router: Router,
                                                caplog: pytest.LogCaptureFixture) -> None:
    status, problem = answer(router, Request("GET", "/api/broken"))
    assert status == 500
    assert "secret" not in json.dumps(problem)
    assert "secret" in caplog.text  # the log has the traceback


@pytest.mark.parametrize("failure", [
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    psycopg.OperationalError("connection to server at 127.0.0.1 failed"),
    PoolTimeout("couldn't get a connection after 5.00 sec"),
], ids=["shutdown", "connection-lost", "pool-exhausted"])
def test_an_unreachable_database_is_a_503_to_retry_not_a_500(
        failure: Exception, caplog: pytest.LogCaptureFixture) -> None:
    def down(request: Request) -> Response:
        raise failure

    response = Router([Route("GET", "/api/down", down, auth=PUBLIC)]).handle(
        Request("GET", "/api/down"))
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    problem = json.loads(response.body)
    assert problem["status"] == 503 and "retry" in problem["detail"]
    assert "Traceback" not in caplog.text


def test_the_guard_runs_before_validation_and_may_set_the_caller() -> None:
    def guard(route: Route, request: Request) -> Request:
        if route.is_public:
            return request
        if request.headers.get("authorization") != "Bearer good":
            raise Unauthorized("A bearer token is required.")
        return replace(request, caller={"sub": "u1", "allowed": list(route.roles)})

    router = Router(ROUTES, guard=guard)
    refused = router.handle(Request("GET", "/api/things/not-a-uuid"))
    assert refused.status == 401  # not 400: nothing is said to an anonymous caller
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    status, body = answer(router, Request("GET", "/api/things", query={"limit": "2"},
                                          headers={"authorization": "Bearer good"}))
    assert status == 200
    assert body["caller"] == {"sub": "u1", "allowed": ["admin"]}
    assert answer(router, Request("GET", "/api/things/search"))[0] == 200


def test_every_route_exposes_its_access_rule() -> None:
    by_id = {route.operation_id: route for route in Router(ROUTES).routes}
    assert by_id["get_api_things_search"].is_public
    assert by_id["get_api_things_id"].auth is AUTHENTICATED
    assert by_id["get_api_things"].roles == ("admin",)  # closed unless declared


# ------------------------------------------------------------------------ bodies

def test_a_valid_body_arrives_parsed(router: Router) -> None:
    request = Request("POST", "/api/things", headers={"content-type": "application/json"},
                      body=b'{"name": "x\'; DROP TABLE things; --", "size": 3}')
    status, body = answer(router, request)
    assert status == 200
    assert body["json"] == {"name": "x'; DROP TABLE things; --", "size": 3}


def test_over_the_limit_is_a_413_by_header_or_by_length(router: Router) -> None:
    json_headers = {"content-type": "application/json"}
    big = b'{"name": "' + b"x" * 5000 + b'"}'
    assert answer(router, Request("POST", "/api/things", headers=json_headers, body=big)
                  )[0] == 413
    claimed = {**json_headers, "content-length": str(10 * MiB)}
    assert answer(router, Request("POST", "/api/things", headers=claimed, body=b'{"name":"a"}')
                  )[0] == 413


def test_raw_uploads_reach_the_handler_as_bytes(router: Router) -> None:
    ok = Request("PUT", "/api/uploads/a.svs", headers={
        "content-type": "application/octet-stream"}, body=b"\x00\xff")
    assert answer(router, ok)[0] == 200
    assert answer(router, Request("PUT", "/api/uploads/a.svs", headers={
        "content-type": "application/json"}, body=b"{}"))[0] == 415
    assert answer(router, Request("PUT", "/api/uploads/a.svs", headers={
        "content-type": "application/octet-stream"}, body=b"x" * 17))[0] == 413


def test_a_body_sent_to_a_route_that_takes_none_is_a_400(router: Router) -> None:
    status, problem = answer(router, Request("GET", "/api/things/search", headers={
        "content-type": "application/json"}, body=b"{}"))
    assert status == 400 and "takes no body" in problem["detail"]


def test_path_query_and_body_errors_come_in_one_answer() -> None:
    route = Route("PUT", "/api/things/{id:uuid}", echo, query=obj({"force": boolean()}),
                  body=THING)
    status, problem = answer(Router([route]), Request(
        "PUT", "/api/things/x", query={"force": "maybe"},
        headers={"content-type": "application/json"}, body=b'{"size": -1}'))
    assert status == 400
    assert [(e["in"], e["field"]) for e in problem["errors"]] == [
        ("path", "id"), ("query", "force"), ("body", "size"), ("body", "name")]


# ------------------------------------------------------------------ JSON output

class Colour(Enum):
    RED = "red"


def test_json_responses_write_zones_uuids_decimals_and_enums() -> None:
    payload = {"at": dt.datetime(2024, 5, 1, 13, 45, tzinfo=dt.timezone(dt.timedelta(hours=2))),
               "day": dt.date(2024, 5, 1), "time": dt.time(13, 45), "id": uuid.UUID(ID),
               "count": Decimal("12"), "ratio": Decimal("0.25"), "colour": Colour.RED}
    assert json.loads(json_response(payload).body) == {
        "at": "2024-05-01T13:45:00+02:00", "day": "2024-05-01", "time": "13:45:00", "id": ID,
        "count": 12, "ratio": 0.25, "colour": "red"}


def test_a_naive_datetime_in_a_response_is_a_bug_not_a_guess() -> None:
    with pytest.raises(TypeError, match="naive"):
        json_response({"at": dt.datetime(2024, 5, 1)})
    with pytest.raises(TypeError, match="no JSON form"):
        json_response({"blob": b"raw"})


# ------------------------------------------------------------ route declarations

@pytest.mark.parametrize(("keywords", "complaint"), [
    ({"method": "FETCH"}, "method"),
    ({"pattern": "api/x"}, "start with '/'"),
    ({"pattern": "/api/x/{id:guid}"}, "unknown converter"),
    ({"pattern": "/api/x/{id}/{id}"}, "twice"),
    ({"pattern": "/api/x/{id"}, "malformed"),
    ({"auth": ("admin", "clinican")}, "unknown roles"),
    ({"auth": ()}, "non-empty"),
    ({"query": {"type": "string"}}, "object schema"),
    ({"query": obj({"filter": obj({})})}, "cannot carry objects"),
    ({"body": {"type": "object", "properties": 3}}, "not a valid JSON Schema"),
    ({"body": THING, "media_types": ("image/tiff",)}, "needs 'application/json'"),
    ({"media_types": ("application/json", "image/tiff")}, "needs a body schema"),
    ({"max_body_bytes": 0}, "positive"),
])
def test_a_wrong_declaration_stops_start_up_naming_the_route(keywords: dict[str, Any],
                                                             complaint: str) -> None:
    declared = {"method": "POST", "pattern": "/api/x", "handler": echo, **keywords}
    with pytest.raises(ValueError, match=complaint):
        Route(**declared)


def test_two_routes_for_the_same_method_and_path_are_refused() -> None:
    with pytest.raises(ValueError, match="Two routes"):
        Router([Route("GET", "/api/x/{a}", echo), Route("GET", "/api/x/{b:uuid}", echo)])


# ----------------------------------------------------------- properties: no 5xx

text = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["'", ";", "--", "' OR 1=1 --", "%00", "\x00", "\ud800", "1e999", "NaN", "-0", "",
     ",", ID, "2024-02-30", "9" * 5000, "../../etc/passwd"])
paths = st.sampled_from(["/api/things", "/api/things/search", f"/api/things/{ID}",
                         f"/api/things/{ID}/tiles/", "/api/uploads/", "/api/broken/x"]) \
    .flatmap(lambda base: st.builds(lambda tail: base + tail, st.just("") | text))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children,
                                                                      max_size=4),
    max_leaves=20)
bodies = st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()) \
    | st.sampled_from([b'{"name": NaN}', b'{"a": 1, "a": 2}', b"[" * 5000, b'"\\ud800"',
                       b'{"name": "\\u0000"}', b"\xff\xfe{}", b'{"size": 1e999}'])
media = st.sampled_from(["application/json", "application/json; charset=latin-1", "",
                         "text/plain", "application/octet-stream", "application/merge-patch+json"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "BREW"]), path=paths,
       query=st.dictionaries(st.sampled_from([*SEARCH["properties"], "x"]) | text, text,
                             max_size=5),
       body=bodies, content_type=media,
       content_length=st.none() | st.sampled_from(["", "-1", "abc", "0", "99999999999"]))
def test_no_request_is_answered_with_a_5xx(method: str, path: str, query: dict[str, str],
                                           body: bytes, content_type: str,
                                           content_length: str | None) -> None:
    headers = {"content-type": content_type}
    if content_length is not None:
        headers["content-length"] = content_length
    router = Router([route for route in ROUTES if route.pattern != "/api/broken"])
    response = router.handle(Request(method, path, query, headers, body))
    assert 200 <= response.status < 500, response.body
    if response.status >= 400:
        problem = json.loads(response.body)
        assert problem["status"] == response.status and problem["detail"]


def test_a_too_large_upload_is_told_how_to_send_a_larger_file() -> None:
    hint = "Send files over 16 bytes as a resumable upload: POST /api/uploads."
    route = Route("POST", "/api/files", echo, media_types=("application/octet-stream",),
                  max_body_bytes=16, too_large_hint=hint)
    plain = Route("POST", "/api/plain", echo, media_types=("application/octet-stream",),
                  max_body_bytes=16)
    router = Router([route, plain])
    headers = {"content-type": "application/octet-stream"}
    status, problem = answer(router, Request("POST", "/api/files", headers=headers,
                                             body=b"x" * 17))
    assert status == 413
    assert problem["detail"] == f"The body is larger than this route's limit of 16 bytes. {hint}"
    status, problem = answer(router, Request("POST", "/api/plain", headers=headers,
                                             body=b"x" * 17))
    assert status == 413 and problem["detail"].endswith("limit of 16 bytes.")
    assert answer(router, Request("POST", "/api/files", headers=headers, body=b"x" * 16)
                  )[0] == 200


# ------------------------------------------------- resolving among the app's routes

def _scan_every_route(routes: list[Route], method: str, path: str) -> Any:
    """What resolving is defined to answer: among all routes matching the path, the
    most specific one for the method; else 405 with the methods allowed; else 404."""
    matches = [route for route in routes if route.path.regex.match(path)]
    if not matches:
        return 404
    for_method = [route for route in matches if route.method == method]
    if not for_method:
        return 405, sorted({route.method for route in matches})
    return max(for_method, key=lambda route: route.path.specificity).operation_id


def test_resolving_tries_few_routes_yet_answers_as_a_scan_of_all_would(tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    assert len(routes) > 50
    router = Router(routes)
    segment = st.sampled_from([ID, "3", "0", "search", "tiles", "", "a b", "%2F", "dzi",
                               "slides", "api", "x" * 300])

    def resolved(method: str, path: str) -> Any:
        try:
            return router.resolve(method, path)[0].operation_id
        except MethodNotAllowed as error:
            return 405, list(error.allowed)
        except NotFound:
            return 404

    @settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
           template=st.sampled_from([route.path.template for route in routes] + ["/", "/api"]),
           fill=st.lists(segment, min_size=8, max_size=8),
           cut=st.integers(-2, 2))
    def same_answer(method: str, template: str, fill: list[str], cut: int) -> None:
        parts = template.split("/")
        parts = [fill[i % 8] if part.startswith("{") else part for i, part in enumerate(parts)]
        if cut > 0:
            parts += fill[:cut]
        elif cut < 0:
            parts = parts[:cut] or [""]
        path = "/".join(parts) or "/"
        assert resolved(method, path) == _scan_every_route(routes, method, path), path

    same_answer()
