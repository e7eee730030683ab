"""``GET /api/health``: database, object storage and mirror lag. No auth, no PHI."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from atrium.api.http import PUBLIC, Reply, Request, Response, Route, json_response
from atrium.api.schema import obj, string

if TYPE_CHECKING:
    from atrium.app import Atrium


def routes(app: Atrium) -> list[Route]:
    def get_health(_request: Request) -> Response:
        checks: dict[str, dict[str, object]] = {}
        try:
            with app.pool.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
            checks["database"] = {"status": "ok"}
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["database"] = {"status": "down", "error": type(exc).__name__}
        try:
            app.store.check()
            checks["storage"] = {"status": "ok"}
        except Exception as exc:  # noqa: BLE001
            checks["storage"] = {"status": "down", "error": type(exc).__name__}
        worker = app.worker
        checks["mirror"] = {
            "status": "ok" if worker.last_error is None else "degraded",
            "seconds_since_last_sync": (round(time.time() - worker.last_success, 3)
                                        if worker.last_success else None),
            "pending_deletions": worker.pending_deletions,
        }
        healthy = all(c["status"] == "ok" for c in checks.values())
        return json_response({"status": "ok" if healthy else "degraded", "checks": checks},
                             status=200 if healthy else 503)

    health = obj({"status": string(), "checks": obj({}, additional=True)}, additional=True)
    return [Route("GET", "/api/health", get_health, auth=PUBLIC, tags=("system",),
                  summary="Database, object storage and mirror health (no PHI)",
                  responses={200: Reply("Everything works", health),
                             503: Reply("Something is down", health)})]
