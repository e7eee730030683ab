"""``GET /api/metrics``: Prometheus metrics, for administrators or a scrape token.

Who may read them: a token with the ``orthanc-admin`` permission (role ``admin``),
as for ``GET /api/mirror/status`` and Orthanc's ``/statistics``, which give the
same kind of platform-wide numbers; or, when ``ATRIUM_METRICS_TOKEN`` is set, a
request carrying exactly that secret as its bearer token — what Prometheus sends
with ``authorization: {credentials: ...}``, since a scraper holds no OIDC token.
The secret opens this route only; every scrape is audited like any request.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from typing import TYPE_CHECKING

from atrium.api.http import Guard, Reply, Request, Response, Route
from atrium.api.schema import string
from atrium.auth.principal import Permission

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["SCRAPE_TOKEN", "ScrapeCredential", "routes", "scrape_token_guard"]


class ScrapeCredential(enum.StrEnum):
    """An ``auth`` item no role grants (roles outside the security model are dropped
    from tokens): the route also admits the scrape token."""

    SCRAPER = "metrics-scraper"


SCRAPE_TOKEN = ScrapeCredential.SCRAPER

_OPENMETRICS = "application/openmetrics-text"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def scrape_token_guard(guard: Guard, token: str | None) -> Guard:
    """``guard``, except that a route admitting :data:`SCRAPE_TOKEN` lets a request
    through whose bearer token is ``token``. The comparison is of SHA-256 digests in
    constant time, so neither the secret's bytes nor its length leak through timing.
    Any other credential goes to ``guard`` as usual; without ``token``, ``guard``."""
    if not token:
        return guard
    expected = _digest(token)

    def check(route: Route, request: Request) -> Request:
        if SCRAPE_TOKEN in route.roles:
            scheme, _, credential = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                    _digest(credential.strip()), expected):
                return request
        return guard(route, request)

    return check


def routes(app: Atrium) -> list[Route]:
    def get_metrics(request: Request) -> Response:
        body, content_type = app.metrics.exposition(request.headers.get("accept", ""))
        return Response(200, body, content_type, {"Cache-Control": "no-store"})

    return [Route(
        "GET", "/api/metrics", get_metrics, tags=("system",),
        auth=(Permission.READ_METRICS, SCRAPE_TOKEN),
        summary="Prometheus metrics (operator or admin, or the scrape token)",
        description="Prometheus' text format, or OpenMetrics when the scraper's Accept "
                    "header asks for it. docs/METRICS.md lists every metric.",
        responses={200: Reply("The metrics", string(), media_type="text/plain",
                              alternatives={_OPENMETRICS: string()})})]
