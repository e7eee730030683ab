"""``GET /api/mirror/status``: the cursor, the lag, the counts on both sides and the
quarantined instances."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from atrium.api.http import Reply, Request, Response, Route, json_response
from atrium.api.schema import obj
from atrium.auth.principal import Permission
from atrium.cluster.leadership import leader_of
from atrium.errors import ServiceUnavailable
from atrium.mirror.quarantine import quarantine_listing
from atrium.orthanc_api import OrthancApi

if TYPE_CHECKING:
    from atrium.app import Atrium
    from atrium.mirror.sync import MirrorWorker

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


def mirror_status(orthanc: OrthancApi, pool: Any, worker: MirrorWorker | None = None
                  ) -> dict[str, Any]:
    """The cursor, the lag and the counts on both sides (``worker``: the running
    mirror's own state, when asked from inside Orthanc)."""
    stats = orthanc.get_json("/statistics")
    last_change = int(orthanc.get_json("/changes?last").get("Last", 0))
    try:
        with pool.connection(timeout=2) as conn:
            patients, studies, series, instances, cursor, cursor_at = conn.execute(
                _MIRROR_COUNTS).fetchone()
            backfill = conn.execute(_LAST_BACKFILL).fetchone()
            quarantine = quarantine_listing(conn)
            leader = leader_of(conn)
    except Exception as exc:
        raise ServiceUnavailable(f"The mirror database is unreachable ({type(exc).__name__})."
                                 ) from exc
    last_success = worker.last_success if worker else None
    return {
        "cursor": cursor,
        "orthanc_last_change": last_change,
        "lag_changes": max(last_change - (cursor or 0), 0),
        "cursor_updated_at": cursor_at,
        "seconds_since_last_sync": (round(time.time() - last_success, 3)
                                    if last_success else None),
        "last_error": worker.last_error if worker else None,
        "pending_deletions": worker.pending_deletions if worker else None,
        # Which node writes the mirror (docs/SCALING.md): None while none does.
        "leader": leader,
        "node": worker.leadership.node if worker and worker.leadership else None,
        "leading": worker.leading if worker else None,
        "orthanc": {"patients": stats.get("CountPatients"),
                    "studies": stats.get("CountStudies"),
                    "series": stats.get("CountSeries"),
                    "instances": stats.get("CountInstances")},
        "mirror": {"patients": patients, "studies": studies, "series": series,
                   "instances": instances},
        # Instances set aside instead of mirrored (atrium.mirror.quarantine).
        "quarantine": quarantine,
        "backfill": None if backfill is None else dict(zip(
            ("job_id", "status", "done", "total", "created_at", "finished_at"), backfill,
            strict=True)),
    }


def routes(app: Atrium) -> list[Route]:
    def get_status(_request: Request) -> Response:
        return json_response(mirror_status(app.orthanc, app.pool, app.worker))

    return [Route("GET", "/api/mirror/status", get_status, auth=(Permission.ORTHANC_ADMIN,),
                  tags=("system",), summary="The mirror's cursor, lag and counts (admin)",
                  responses={200: Reply("The mirror's state", obj({}, additional=True))})]
