"""``GET /api/mirror/status``: the cursor, the lag and the counts on both sides."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from atrium.api.http import Request, Response, Route, json_response
from atrium.errors import ServiceUnavailable

if TYPE_CHECKING:
    from atrium.app import Atrium

_MIRROR_COUNTS = """
SELECT (SELECT count(*) FROM patients WHERE deleted_at IS NULL),
       (SELECT count(*) FROM studies WHERE deleted_at IS NULL),
       (SELECT count(*) FROM series WHERE deleted_at IS NULL),
       (SELECT count(*) FROM instances WHERE deleted_at IS NULL),
       (SELECT last_seq FROM mirror_state WHERE name = 'orthanc'),
       (SELECT updated_at FROM mirror_state WHERE name = 'orthanc')
"""

_LAST_BACKFILL = """
SELECT id, status, progress_done, progress_total, created_at, finished_at FROM jobs
WHERE kind = 'backfill' ORDER BY created_at DESC LIMIT 1
"""


def routes(app: Atrium) -> list[Route]:
    def get_status(_request: Request) -> Response:
        stats = app.orthanc.get_json("/statistics")
        last_change = app.mirror.last_change()
        try:
            with app.pool.connection(timeout=2) as conn:
                patients, studies, series, instances, cursor, cursor_at = conn.execute(
                    _MIRROR_COUNTS).fetchone()
                backfill = conn.execute(_LAST_BACKFILL).fetchone()
        except Exception as exc:
            raise ServiceUnavailable(f"The mirror database is unreachable ({type(exc).__name__})."
                                     ) from exc
        worker = app.worker
        payload: dict[str, Any] = {
            "cursor": cursor,
            "orthanc_last_change": last_change,
            "lag_changes": max(last_change - (cursor or 0), 0),
            "cursor_updated_at": cursor_at,
            "seconds_since_last_sync": (round(time.time() - worker.last_success, 3)
                                        if worker.last_success else None),
            "last_error": worker.last_error,
            "pending_deletions": worker.pending_deletions,
            "orthanc": {"patients": stats.get("CountPatients"),
                        "studies": stats.get("CountStudies"),
                        "series": stats.get("CountSeries"),
                        "instances": stats.get("CountInstances")},
            "mirror": {"patients": patients, "studies": studies, "series": series,
                       "instances": instances},
            "backfill": None if backfill is None else dict(zip(
                ("job_id", "status", "done", "total", "created_at", "finished_at"), backfill,
                strict=True)),
        }
        return json_response(payload)

    return [Route("GET", "/api/mirror/status", get_status)]
