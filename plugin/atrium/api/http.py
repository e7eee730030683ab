"""Requests and responses as plain values, routes that declare their contract, and
the router that maps one to the other.

The Orthanc edge converts its callback arguments into a :class:`Request` and
writes the :class:`Response` back; nothing here knows about Orthanc.

A resource module declares its routes as data — method, pattern, handler, and the
contract: who may call it (``auth``), its query parameters and body as JSON Schema,
its answers — and the router enforces that contract before the handler runs::

    NOTE = obj({"title": string(max_length=200), "pinned": boolean()},
               required=["title"])

    def routes(app: Atrium) -> list[Route]:
        def create_note(request: Request) -> Response:
            note = app.notes.create(request.json)          # validated already
            return json_response(note, status=201)

        def get_note(request: Request) -> Response:
            return json_response(app.notes.get(request.params["id"]))  # a UUID

        return [
            Route("POST", "/api/notes", create_note, summary="Create a note",
                  tags=("notes",), auth=("clinician",), body=NOTE,
                  responses={201: Reply("The new note", NOTE)}),
            Route("GET", "/api/notes/{id:uuid}", get_note, summary="Read a note",
                  tags=("notes",), auth=AUTHENTICATED,
                  responses={200: Reply("The note", NOTE)}),
        ]

Order of checks for every request: route (404/405), then the ``guard`` the
authentication layer installs (401/403), then inputs (413, 415, 400), then the
handler. The OpenAPI document (:mod:`atrium.api.openapi`) is generated from the
same declarations.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from atrium.api.params import (
    JSON,
    BodySpec,
    Inputs,
    ParamSpec,
    PathTemplate,
    is_json_media_type,
    parse_pattern,
)
from atrium.api.schema import Schema, compile_schema
from atrium.auth.principal import KNOWN_ROLES
from atrium.db import unreachable
from atrium.errors import ApiError, MethodNotAllowed, NotFound, ServiceUnavailable

log = logging.getLogger(__name__)

__all__ = [
    "ADMIN_ONLY", "AUTHENTICATED", "JSON", "MiB", "PUBLIC", "ROLES", "Access", "AuditNote",
    "Auth",
    "Guard", "Handler", "RawJson", "Reply", "Request", "Response", "Route", "Router",
    "json_response",
    "no_content", "problem_response",
]

MiB = 1024 * 1024

# ------------------------------------------------------------------ access rules


class Access(enum.Enum):
    """Access that is not a list of roles."""

    PUBLIC = "public"  # no token at all: /api/health, /api/openapi.json
    AUTHENTICATED = "authenticated"  # any valid token, whatever its roles: /api/me


PUBLIC = Access.PUBLIC
AUTHENTICATED = Access.AUTHENTICATED

ROLES = KNOWN_ROLES
"""The roles of the security model (SPEC §7); a route naming another is refused at
start-up, so a misspelt role cannot silently lock everyone out."""

Auth = Access | tuple[str, ...]
"""Who may call a route: :data:`PUBLIC`, :data:`AUTHENTICATED`, or a tuple any one
item of which suffices — role names (checked against :data:`ROLES`) or enum members
such as the authentication layer's permissions (carried as declared). The guard
reads it; the router only carries it."""

ADMIN_ONLY: Auth = ("admin",)
"""The default: a route that forgets to say who may call it is closed, not open."""

# -------------------------------------------------------------- requests, responses


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # e.g. "/api/health"
    query: Mapping[str, str] = field(default_factory=dict)  # raw, as received
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    client_ip: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)  # path parameters, typed
    args: Mapping[str, Any] = field(default_factory=dict)  # query parameters, typed
    json: Any = None  # the validated JSON body, None when there is none
    caller: Any = None  # who is calling; set by the authentication guard
    route: Route | None = None  # the route that matched


@dataclass(frozen=True)
class AuditNote:
    """What a handler tells the audit log about its answer: the resource it is about
    and whether the answer carries PHI (identified patient data)."""

    resource_type: str | None = None
    resource_id: uuid.UUID | None = None
    phi: bool = False


REQUEST_TIMINGS: ContextVar[dict[str, float] | None] = ContextVar("request_timings",
                                                                 default=None)
"""Seconds spent per part of the request being answered (``auth`` is filled by the
router; :class:`atrium.auth.request_audit.AuditedApi` adds the rest and sends
them as a ``Server-Timing`` header)."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)
    audit: AuditNote | None = None


def _aware_isoformat(value: dt.datetime) -> str:
    if value.utcoffset() is None:
        raise TypeError("A naive datetime reached a JSON response; API timestamps carry "
                        "a zone (read timestamptz columns, or use datetime.now(UTC)).")
    return value.isoformat()


def _decimal_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


_JSON_CONVERSIONS: dict[type, Callable[[Any], Any]] = {
    dt.datetime: _aware_isoformat,
    dt.date: dt.date.isoformat,
    dt.time: dt.time.isoformat,
    uuid.UUID: str,
    Decimal: _decimal_number,
    enum.Enum: lambda member: member.value,
}


def _to_json(value: Any) -> Any:
    for kind in type(value).__mro__:
        convert = _JSON_CONVERSIONS.get(kind)
        if convert is not None:
            return convert(value)
    raise TypeError(f"{type(value).__name__} has no JSON form; convert it in the handler")


@dataclass(frozen=True)
class RawJson:
    """A value already encoded as JSON text by PostgreSQL (``jsonb::text``), put
    into an answer as it is: a page of polygons then costs no parse in Python and
    no float formatting, most of the time of such an answer otherwise."""

    text: str


def _encode(payload: Any) -> str:
    raw: list[str] = []
    nonce = secrets.token_hex(8)

    def convert(value: Any) -> Any:
        if isinstance(value, RawJson):
            raw.append(value.text)
            return f"\ue000{nonce}:{len(raw) - 1}\ue000"
        return _to_json(value)

    body = json.dumps(payload, default=convert, separators=(",", ":"), allow_nan=False)
    if not raw:
        return body
    # Each stand-in is a JSON string with an unguessable nonce: no text a client
    # wrote can be mistaken for one.
    return _STAND_IN.sub(lambda m: raw[int(m.group(2))] if m.group(1) == nonce else m.group(0),
                         body)


_STAND_IN = re.compile(r'"\\ue000([0-9a-f]{16}):(\d+)\\ue000"')


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None,
                  audit: AuditNote | None = None) -> Response:
    """``payload`` as JSON: aware datetimes in ISO 8601 with their zone, UUIDs as
    strings, decimals as numbers, :class:`RawJson` as the text it holds. Anything
    else unknown is a bug (``TypeError``), never a silent ``str()``. ``audit`` tells
    the audit log what the answer holds."""
    return Response(status, _encode(payload).encode(), JSON, dict(headers or {}), audit)


def no_content(headers: Mapping[str, str] | None = None) -> Response:
    return Response(204, b"", JSON, dict(headers or {}))


RETRY_AFTER_SECONDS = 5
"""What a 503 asks the client to wait: about what a PostgreSQL restart takes."""


def problem_response(error: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    if error.status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    body = json.dumps(error.problem()).encode()
    return Response(error.status, body, "application/problem+json", headers)


# ------------------------------------------------------------------------ routes

Handler = Callable[[Request], Response]

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Reply:
    """One documented answer of a route; a status ≥ 400 without a schema is
    documented as a problem document."""

    description: str
    schema: Schema | None = None
    media_type: str = JSON
    # Other media types the same status may answer in (content negotiation).
    alternatives: Mapping[str, Schema] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Route:
    """A route and its contract.

    Parameters
    ----------
    method, pattern
        ``"GET"``, ``"/api/studies/{id:uuid}"``. A parameter is ``{name}`` (any
        segment) or ``{name:converter}`` with a converter of
        :data:`atrium.api.params.PATH_CONVERTERS` (``uuid``, ``int``, ``str``).
    handler
        Called with a :class:`Request` whose ``params``, ``args`` and ``json`` are
        validated and typed.
    summary, description, tags, operation_id
        For the OpenAPI document; ``operation_id`` defaults to one derived from
        the method and pattern.
    query
        Object schema of the query parameters (:func:`atrium.api.schema.obj`);
        None accepts none. Unknown parameters are refused.
    body
        Schema of the JSON body; None when the route takes no JSON body.
    responses
        Status → :class:`Reply`. Problem answers implied by the contract (400,
        401, 403, 404, 413, 415) are documented without being listed here.
    auth
        Who may call: see :data:`Auth`. Defaults to :data:`ADMIN_ONLY`.
    media_types
        Accepted ``Content-Type`` of a body. Non-JSON types (uploads) reach the
        handler as raw ``request.body``.
    max_body_bytes
        Larger bodies are refused with 413 before anything reads them.
    too_large_hint
        A sentence the 413 problem adds, saying how to send a larger file (a
        file-upload route names the resumable uploads of ``/api/uploads``).
    coalesce_audit
        For high-rate reads of one resource (slide tiles): successful answers are
        recorded once per caller and resource per window, not once each
        (:class:`atrium.auth.request_audit.AuditedApi`).

    Raises
    ------
    ValueError
        For any inconsistent declaration, so a wrong route stops start-up with a
        sentence naming it rather than failing on its first request.
    """

    method: str
    pattern: str
    handler: Handler
    summary: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    query: Schema | None = None
    body: Schema | None = None
    responses: Mapping[int, Reply] = field(default_factory=dict)
    auth: Auth = ADMIN_ONLY
    media_types: tuple[str, ...] = (JSON,)
    max_body_bytes: int = MiB
    too_large_hint: str = ""
    coalesce_audit: bool = False
    operation_id: str = ""
    path: PathTemplate = field(init=False, repr=False)
    inputs: Inputs = field(init=False, repr=False)

    def __post_init__(self) -> None:
        name = f"{self.method} {self.pattern}"
        if self.method not in _METHODS:
            raise ValueError(f"{name}: method must be one of {sorted(_METHODS)}")
        self._check_auth(name)
        if self.max_body_bytes <= 0:
            raise ValueError(f"{name}: max_body_bytes must be positive")
        if not self.media_types or any(m != m.lower() or "/" not in m for m in self.media_types):
            raise ValueError(f"{name}: media_types must be lower-case type/subtype names")
        json_types = [m for m in self.media_types if is_json_media_type(m)]
        if self.body is not None and not json_types:
            raise ValueError(f"{name}: a body schema needs {JSON!r} among media_types")
        if self.body is None and json_types and len(json_types) < len(self.media_types):
            raise ValueError(f"{name}: accepting {json_types[0]!r} needs a body schema")
        for status in self.responses:
            if not 100 <= status <= 599:
                raise ValueError(f"{name}: response status {status} is not an HTTP status")
        path = parse_pattern(self.pattern)
        object.__setattr__(self, "path", path)
        path_schema = {"type": "object", "properties": path.params,
                       "required": list(path.params), "additionalProperties": False}
        body = None if self.body is None else compile_schema(self.body, what=f"body of {name}")
        object.__setattr__(self, "inputs", Inputs(
            ParamSpec.compile("path", path_schema, f"path of {name}"),
            ParamSpec.compile("query", self.query, f"query of {name}"),
            BodySpec(body, self.media_types, self.max_body_bytes, self.too_large_hint),
        ))
        if not self.operation_id:
            slug = "_".join(p.strip("{}") for p in path.template.split("/") if p)
            object.__setattr__(self, "operation_id", f"{self.method.lower()}_{slug}")

    def _check_auth(self, name: str) -> None:
        if isinstance(self.auth, Access):
            return
        if not isinstance(self.auth, tuple) or not self.auth:
            raise ValueError(f"{name}: auth must be PUBLIC, AUTHENTICATED or a non-empty "
                             "tuple of roles")
        unknown = sorted(str(item) for item in self.auth
                         if not isinstance(item, enum.Enum) and item not in ROLES)
        if unknown:
            raise ValueError(f"{name}: unknown roles {unknown}; the roles are {sorted(ROLES)}")

    @property
    def is_public(self) -> bool:
        return self.auth is PUBLIC

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles (or permissions) allowed; empty for :data:`PUBLIC` and
        :data:`AUTHENTICATED`."""
        return () if isinstance(self.auth, Access) else self.auth

    @property
    def query_parameters(self) -> dict[str, Schema]:
        return self.inputs.query.properties

    @property
    def takes_body(self) -> bool:
        return self.inputs.body.takes_body

    def bind(self, request: Request, raw_params: Mapping[str, str]) -> Request:
        """``request`` with this route and its typed ``params``, ``args`` and ``json``; raises the
        413, 415 or 400 problem of :meth:`atrium.api.params.Inputs.read`."""
        params, args, json_body = self.inputs.read(raw_params, request.query,
                                                   request.headers, request.body)
        return replace(request, route=self, params=params, args=args, json=json_body)


# ------------------------------------------------------------------------ router

Guard = Callable[[Route, Request], Request]
"""Runs after routing and before input validation: may refuse (raise 401/403) or
return the request with ``caller`` set. The authentication layer installs one."""


def _bucket(template: str, params: Mapping[str, Any]) -> tuple[int, str | None]:
    """Segments of a route's paths and their second segment when it is literal."""
    parts = template.split("/")
    second = parts[2] if len(parts) > 2 else None
    literal = second is not None and second.strip("{}") not in params
    return len(parts), second if literal else None


class Router:
    """Dispatch table of routes; every error becomes a problem document."""

    def __init__(self, routes: Iterable[Route], guard: Guard | None = None) -> None:
        self._routes = tuple(routes)
        self._guard = guard
        seen: set[tuple[str, str]] = set()
        # A parameter matches exactly one segment, so only routes with as many
        # segments as the path, and the same literal second segment ("slides" of
        # /api/slides/...), can match it: resolving tries those few, not every route.
        self._buckets: dict[tuple[int, str | None], list[Route]] = {}
        for route in self._routes:
            key = (route.method, route.path.shape)
            if key in seen:
                raise ValueError(f"Two routes for {route.method} {route.path.template}")
            seen.add(key)
            self._buckets.setdefault(_bucket(route.path.template, route.path.params),
                                     []).append(route)

    @property
    def routes(self) -> tuple[Route, ...]:
        """Every route, in declaration order (the OpenAPI document reads them)."""
        return self._routes

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method`` and ``path`` and its raw path parameters; a
        literal segment wins over a parameter (``/a/search`` before ``/a/{id}``).

        Raises
        ------
        NotFound, MethodNotAllowed
        """
        segments = path.split("/", 3)
        count = path.count("/") + 1
        second = segments[2] if len(segments) > 2 else None
        candidates = self._buckets.get((count, second), [])
        if second is not None:
            candidates = [*candidates, *self._buckets.get((count, None), [])]
        matches = [(route, match.groupdict()) for route in candidates
                   if (match := route.path.regex.match(path))]
        if not matches:
            raise NotFound(f"No route {path[:200]}")
        for_method = [m for m in matches if m[0].method == method]
        if not for_method:
            allowed = sorted({route.method for route, _ in matches})
            raise MethodNotAllowed(f"{method[:20]} is not allowed on {path[:200]}; use "
                                   f"{', '.join(allowed)}", allowed=allowed)
        return max(for_method, key=lambda m: m[0].path.specificity)

    def handle(self, request: Request) -> Response:
        return self.answer(request)[0]

    def answer(self, request: Request) -> tuple[Response, Route | None, Mapping[str, str]]:
        """The answer to ``request``, the route that matched it (None when none did,
        or none for its method) and that route's raw path parameters."""
        route: Route | None = None
        raw_params: Mapping[str, str] = {}
        try:
            route, raw_params = self.resolve(request.method, request.path)
            return self._dispatch(request, route, raw_params), route, raw_params
        except ApiError as error:
            return problem_response(error), route, raw_params
        except Exception as error:
            if unreachable(error):
                log.warning("api.database_unreachable method=%s path=%s error=%s",
                            request.method, request.path, type(error).__name__)
                return problem_response(ServiceUnavailable(
                    "The database cannot be reached right now; retry in a few seconds."
                )), route, raw_params
            log.exception("api.unhandled method=%s path=%s", request.method, request.path)
            return problem_response(ApiError("The server could not complete the request.")), \
                route, raw_params

    def _dispatch(self, request: Request, route: Route, raw_params: Mapping[str, str]
                  ) -> Response:
        if self._guard is not None:
            began = time.perf_counter()
            try:
                request = self._guard(route, request)
            finally:
                spent = REQUEST_TIMINGS.get()
                if spent is not None:
                    spent["auth"] = time.perf_counter() - began
        return route.handler(route.bind(request, raw_params))
