"""Requests and responses as plain values, and the router that maps one to the other.

The Orthanc edge converts its callback arguments into a :class:`Request` and
writes the :class:`Response` back; nothing here knows about Orthanc. Resources
declare their routes in a table (method, pattern → handler); authentication will
wrap :meth:`Router.handle` without touching the resources.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from atrium.errors import ApiError, MethodNotAllowed, NotFound

log = logging.getLogger(__name__)

__all__ = ["Request", "Response", "Route", "Router", "json_response", "problem_response"]


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # e.g. "/api/health"
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    client_ip: str = ""
    params: Mapping[str, str] = field(default_factory=dict)  # from the route pattern


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> Response:
    body = json.dumps(payload, default=str, separators=(",", ":")).encode()
    return Response(status, body, "application/json", dict(headers or {}))


def problem_response(error: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    body = json.dumps(error.problem()).encode()
    return Response(error.status, body, "application/problem+json", headers)


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str  # "/api/jobs/{id}"
    handler: Handler

    def compile(self) -> re.Pattern[str]:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.pattern)
        return re.compile(f"^{regex}$")


class Router:
    """Dispatch table of routes; every error becomes a problem document."""

    def __init__(self, routes: list[Route]) -> None:
        self._routes = [(route, route.compile()) for route in routes]

    def handle(self, request: Request) -> Response:
        try:
            return self._dispatch(request)
        except ApiError as error:
            return problem_response(error)
        except Exception:
            log.exception("api.unhandled method=%s path=%s", request.method, request.path)
            return problem_response(ApiError("The server could not complete the request."))

    def _dispatch(self, request: Request) -> Response:
        allowed: list[str] = []
        for route, regex in self._routes:
            match = regex.match(request.path)
            if not match:
                continue
            if route.method != request.method:
                allowed.append(route.method)
                continue
            return route.handler(Request(
                request.method, request.path, request.query, request.headers, request.body,
                request.client_ip, match.groupdict()))
        if allowed:
            raise MethodNotAllowed(
                f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}",
                allowed=allowed)
        raise NotFound(f"No route {request.path}")
